/* recorder.segment._dedupe: the Deduper's C implementation (dedupe.py holds the pure-Python one, the reference).

Same decisions, same state, arrival by arrival (tests/test_dedupe_native.py compares them on random interleavings):
first arrival wins, multiset semantics per source, a window per original bounded in time and in count, oldest
first; an original leaves alone and the pairing shifts (dedupe.py's module docstring has the rule).

State. The live originals sit in arrival order in a ring of slots, addressed by absolute position (`head` ..
`tail`); a slot holds the original's receive time and ref and the 16-byte key. The slot of a key's first live
original is its entry's *owner*: it holds either the common case inline — the first source and a bitmask of the
sources 0-7 that already delivered their copy — or, for a key that one source delivered twice, a source that
joined after the original arrived, or a source beyond 7, a `General` entry: the positions of the key's live
originals (each has a slot of its own, so it leaves the window at its own time) and, per source, the index of the
original its next arrival pairs with (dedupe.py's `_Entry`). When the owner leaves, the General passes to the next
original's slot. Each source's join (dedupe.py's module docstring) is a position: originals before it are not the
source's to pair with; a source that joined and delivered nothing since is *settling*, and its first arrival
moves its join to that arrival's original. An open-addressing table (linear probing, backward-shift
deletion) maps a key's hash to its owner's position. Keys are xxh3-128 digests, already uniform: the table mixes
their two halves with one multiply.

Refs are Python ints, held by reference (a recorder's ref packs a connection, a batch serial and an index and
does not fit 64 bits); times are int64 (the segment format's). Nothing here calls back into Python, and the type
holds only ints, so it needs no garbage-collector support: the collector never walks the window.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FAST_SOURCES 8
#define EMPTY UINT64_MAX
#define KEY_BYTES 16

typedef struct { int64_t source; int64_t n; } SourceCount;
typedef struct { int64_t source; uint64_t at; int settling; } Joined;  /* a source beyond 7's join (dedupe.py join) */
/* A source whose first arrival since it joined was new, and that original's position (dedupe.py _awaiting). */
typedef struct { int64_t source; uint64_t at; } Awaiting;

typedef struct {
    uint64_t *originals;  /* ring positions of the key's originals; the live ones are [start, n_originals) */
    Py_ssize_t start, n_originals, cap_originals;
    SourceCount *sources; /* per source, the index in `originals` its next arrival pairs with (dedupe.py _Entry.next) */
    Py_ssize_t n_sources, cap_sources;
} General;

typedef struct {
    int64_t ts;
    PyObject *ref;      /* owned */
    uint64_t k0, k1;
    General *general;   /* owner only; NULL: the inline case (first, mask) */
    uint8_t first;
    uint8_t mask;
    uint8_t owner;      /* the key's first live original: the table points here */
} Slot;

typedef struct { uint64_t hash; uint64_t pos; } Bucket;

typedef struct {
    PyObject_HEAD
    Slot *ring;
    uint64_t ring_cap;   /* a power of two */
    uint64_t head, tail; /* absolute positions of the live slots: [head, tail) */
    Bucket *table;
    uint64_t table_cap;  /* a power of two, at least twice the live entries */
    int table_shift;     /* 64 - log2(table_cap) */
    int64_t window_ns;
    Py_ssize_t max_entries;
    long long originals, copies;
    uint64_t joined[FAST_SOURCES];  /* each source's join position (dedupe.py `join`); sources 0-7 here */
    uint8_t settling;               /* sources 0-7 that joined and delivered nothing since */
    Joined *joined_other;           /* the others' */
    Py_ssize_t n_joined_other, cap_joined_other;
    Py_ssize_t n_settling;          /* how many sources, of all, are settling: 0 in the common case */
    Awaiting *awaiting;             /* in the order they began, as dedupe.py's list */
    Py_ssize_t n_awaiting, cap_awaiting;
    uint64_t decided;               /* the last arrival's original's position (its own when it is one) */
} Deduper;

/* --- keys and the table ----------------------------------------------------------------------------------- */

static inline uint64_t key_hash(uint64_t k0, uint64_t k1) {
    return (k0 ^ (k1 * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL;
}

static inline Slot *slot_at(Deduper *d, uint64_t pos) { return &d->ring[pos & (d->ring_cap - 1)]; }

/* The live position holding this key, or EMPTY; *free_at is where it would go (the first empty bucket). */
static inline uint64_t table_find(Deduper *d, uint64_t hash, uint64_t k0, uint64_t k1, uint64_t *free_at) {
    uint64_t mask = d->table_cap - 1, i = hash >> d->table_shift;
    for (;;) {
        Bucket *b = &d->table[i];
        if (b->pos == EMPTY) { *free_at = i; return EMPTY; }
        if (b->hash == hash) {
            Slot *s = slot_at(d, b->pos);
            if (s->k0 == k0 && s->k1 == k1) return b->pos;
        }
        i = (i + 1) & mask;
    }
}

/* The bucket pointing at `pos` (which must be an owner's). */
static inline uint64_t table_bucket(Deduper *d, uint64_t hash, uint64_t pos) {
    uint64_t mask = d->table_cap - 1, i = hash >> d->table_shift;
    while (d->table[i].pos != pos) i = (i + 1) & mask;
    return i;
}

static void table_remove(Deduper *d, uint64_t hash, uint64_t pos) {
    uint64_t mask = d->table_cap - 1, i = table_bucket(d, hash, pos);
    /* Backward shift: pull later buckets of the same probe run into the hole, so lookups need no tombstones. */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        Bucket *b = &d->table[j];
        if (b->pos == EMPTY) break;
        uint64_t home = b->hash >> d->table_shift;
        /* b may move to the hole i unless its home lies cyclically in (i, j]. */
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) { d->table[i] = *b; i = j; }
    }
    d->table[i].pos = EMPTY;
}

static int table_resize(Deduper *d, uint64_t cap) {
    Bucket *table = PyMem_Malloc(cap * sizeof(Bucket));
    if (!table) { PyErr_NoMemory(); return -1; }
    for (uint64_t i = 0; i < cap; i++) table[i].pos = EMPTY;
    int shift = 64;
    for (uint64_t c = cap; c > 1; c >>= 1) shift--;
    PyMem_Free(d->table);
    d->table = table;
    d->table_cap = cap;
    d->table_shift = shift;
    for (uint64_t pos = d->head; pos < d->tail; pos++) {
        Slot *s = slot_at(d, pos);
        if (!s->owner) continue;
        uint64_t hash = key_hash(s->k0, s->k1), i = hash >> shift;
        while (table[i].pos != EMPTY) i = (i + 1) & (cap - 1);
        table[i].hash = hash;
        table[i].pos = pos;
    }
    return 0;
}

static int ring_grow(Deduper *d) {
    uint64_t cap = d->ring_cap * 2;
    Slot *ring = PyMem_Malloc(cap * sizeof(Slot));
    if (!ring) { PyErr_NoMemory(); return -1; }
    for (uint64_t pos = d->head; pos < d->tail; pos++) ring[pos & (cap - 1)] = *slot_at(d, pos);
    PyMem_Free(d->ring);
    d->ring = ring;
    d->ring_cap = cap;
    return 0;
}

/* --- entries ---------------------------------------------------------------------------------------------- */

static void general_free(General *g) {
    PyMem_Free(g->originals);
    PyMem_Free(g->sources);
    PyMem_Free(g);
}

static inline Py_ssize_t general_live(General *g) { return g->n_originals - g->start; }

static int general_add_original(General *g, uint64_t pos) {
    if (g->n_originals == g->cap_originals) {
        if (g->start && 2 * g->start >= g->cap_originals) {  /* half of it departed: reuse their room */
            memmove(g->originals, g->originals + g->start, (size_t)general_live(g) * sizeof(uint64_t));
            g->n_originals -= g->start;
            for (Py_ssize_t i = 0; i < g->n_sources; i++)
                g->sources[i].n = g->sources[i].n > g->start ? g->sources[i].n - g->start : 0;
            g->start = 0;
        } else {
            Py_ssize_t cap = g->cap_originals ? 2 * g->cap_originals : 2;
            uint64_t *o = PyMem_Realloc(g->originals, (size_t)cap * sizeof(uint64_t));
            if (!o) { PyErr_NoMemory(); return -1; }
            g->originals = o;
            g->cap_originals = cap;
        }
    }
    g->originals[g->n_originals++] = pos;
    return 0;
}

/* The oldest live original left the window (dedupe.py _Entry.depart): a source's index below `start` now means
   the first live one, as each source's count going down by one did. 0: it was the last one (the entry goes). */
static inline int general_depart(General *g) { return ++g->start < g->n_originals; }

/* The index of the original `source`'s next arrival pairs with, as a pointer to update (added at 0 when new);
   NULL on no memory. */
static int64_t *general_next(General *g, int64_t source) {
    for (Py_ssize_t i = 0; i < g->n_sources; i++)
        if (g->sources[i].source == source) return &g->sources[i].n;
    if (g->n_sources == g->cap_sources) {
        Py_ssize_t cap = g->cap_sources ? 2 * g->cap_sources : 4;
        SourceCount *s = PyMem_Realloc(g->sources, (size_t)cap * sizeof(SourceCount));
        if (!s) { PyErr_NoMemory(); return NULL; }
        g->sources = s;
        g->cap_sources = cap;
    }
    g->sources[g->n_sources] = (SourceCount){source, 0};
    return &g->sources[g->n_sources++].n;
}

/* dedupe.py's _Entry(ts, ref, position, first_source, matched): one original (the slot at `pos`), one arrival from
   `first` and from each source in `matched`. */
static General *general_new(uint64_t pos, int64_t first, unsigned matched) {
    General *g = PyMem_Calloc(1, sizeof(General));
    if (!g) { PyErr_NoMemory(); return NULL; }
    if (general_add_original(g, pos) < 0) goto fail;
    int64_t *n = general_next(g, first);
    if (!n) goto fail;
    *n = 1;
    for (int source = 0; matched; source++, matched >>= 1) {
        if (matched & 1) {
            if (!(n = general_next(g, source))) goto fail;
            *n = 1;
        }
    }
    return g;
fail:
    general_free(g);
    return NULL;
}

static void slot_release(Slot *s) {
    Py_CLEAR(s->ref);
    if (s->general) { general_free(s->general); s->general = NULL; }
}

/* Drop the oldest originals while the oldest is older than the window or the window is full (dedupe.py _expire).
   The oldest slot is always its key's owner (the key's earlier originals left before it). */
static inline void expire(Deduper *d, int64_t ts) {
    __int128 horizon = (__int128)ts - d->window_ns;
    while (d->head < d->tail) {
        Slot *s = slot_at(d, d->head);
        if (!((__int128)s->ts < horizon || d->tail - d->head >= (uint64_t)d->max_entries)) break;
        uint64_t hash = key_hash(s->k0, s->k1);
        General *g = s->general;
        if (g && general_depart(g)) {  /* the key's later originals stay: the next one owns the entry now */
            uint64_t next = g->originals[g->start];
            Slot *heir = slot_at(d, next);
            heir->general = g;
            heir->owner = 1;
            d->table[table_bucket(d, hash, d->head)].pos = next;
            s->general = NULL;
        } else {
            table_remove(d, hash, d->head);
        }
        slot_release(s);
        d->head++;
    }
}

/* --- joins ------------------------------------------------------------------------------------------------ */

static Joined *joined_find(Deduper *d, int64_t source) {
    for (Py_ssize_t i = 0; i < d->n_joined_other; i++)
        if (d->joined_other[i].source == source) return &d->joined_other[i];
    return NULL;
}

static inline uint64_t joined_at(Deduper *d, int64_t source) {
    if (0 <= source && source < FAST_SOURCES) return d->joined[source];
    Joined *j = joined_find(d, source);
    return j ? j->at : 0;
}

static inline int is_settling(Deduper *d, int64_t source) {
    if (0 <= source && source < FAST_SOURCES) return d->settling >> source & 1;
    Joined *j = joined_find(d, source);
    return j && j->settling;
}

static void awaiting_drop(Deduper *d, int64_t source) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < d->n_awaiting; i++)
        if (d->awaiting[i].source != source) d->awaiting[kept++] = d->awaiting[i];
    d->n_awaiting = kept;
}

static int awaiting_reserve(Deduper *d) {
    if (d->n_awaiting < d->cap_awaiting) return 0;
    Py_ssize_t cap = d->cap_awaiting ? 2 * d->cap_awaiting : 4;
    Awaiting *grown = PyMem_Realloc(d->awaiting, (size_t)cap * sizeof(Awaiting));
    if (!grown) { PyErr_NoMemory(); return -1; }
    d->awaiting = grown;
    d->cap_awaiting = cap;
    return 0;
}

static void set_joined(Deduper *d, int64_t source, uint64_t at) {
    if (0 <= source && source < FAST_SOURCES) d->joined[source] = at;
    else joined_find(d, source)->at = at;  /* it joined: it is there */
}

/* dedupe.py _observe_joined: `source`'s arrival was decided (`copy`: a copy of the original at `at`) while some
   source awaits another's copy of its first message. */
static void confirm(Deduper *d, int64_t source, int copy, uint64_t at) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < d->n_awaiting; i++) {
        Awaiting *w = &d->awaiting[i];
        if (copy && w->at == at && w->source != source) set_joined(d, w->source, d->tail);
        else if (w->at >= d->head) d->awaiting[kept++] = *w;
    }
    d->n_awaiting = kept;
}

/* dedupe.py's join: the source's arrivals pair only with originals from position `tail` on, and its next arrival
   settles the join (settle below). */
static int join(Deduper *d, int64_t source) {
    awaiting_drop(d, source);
    if (0 <= source && source < FAST_SOURCES) {
        d->joined[source] = d->tail;
        if (!(d->settling >> source & 1)) d->n_settling++;
        d->settling |= (uint8_t)(1u << source);
        return 0;
    }
    Joined *j = joined_find(d, source);
    if (!j) {
        if (d->n_joined_other == d->cap_joined_other) {
            Py_ssize_t cap = d->cap_joined_other ? 2 * d->cap_joined_other : 4;
            Joined *grown = PyMem_Realloc(d->joined_other, (size_t)cap * sizeof(Joined));
            if (!grown) { PyErr_NoMemory(); return -1; }
            d->joined_other = grown;
            d->cap_joined_other = cap;
        }
        j = &d->joined_other[d->n_joined_other++];
        *j = (Joined){source, 0, 0};
    }
    j->at = d->tail;
    if (!j->settling) d->n_settling++;
    j->settling = 1;
    return 0;
}

/* dedupe.py _first_since_join: the source's first arrival since it joined paired with (or was, `new`) the original
   at `at`; the join moves there, and a new one awaits another source's delivery of its bytes (room reserved). */
static void settle(Deduper *d, int64_t source, uint64_t at, int new) {
    d->n_settling--;
    if (0 <= source && source < FAST_SOURCES) {
        d->joined[source] = at;
        d->settling &= (uint8_t)~(1u << source);
    } else {
        Joined *j = joined_find(d, source);
        j->at = at;
        j->settling = 0;
    }
    if (new) d->awaiting[d->n_awaiting++] = (Awaiting){source, at};
}

/* The first index at or after `at` whose original arrived at or after `joined` (the originals are in order). */
static Py_ssize_t general_seek(General *g, Py_ssize_t at, uint64_t joined) {
    Py_ssize_t lo = at, hi = g->n_originals;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (g->originals[mid] < joined) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* observe's decision, the joins' bookkeeping aside (observe_joined does it). d->decided: the original's position
   (the arrival's own when it is one), a field rather than a ninth argument, which cost the fast path instructions. */
static inline int decide(Deduper *d, int64_t ts, int64_t source, uint64_t k0, uint64_t k1, PyObject *ref,
                         int64_t *orig_ts, PyObject **orig_ref) {
    if (d->head < d->tail) {
        Slot *oldest = slot_at(d, d->head);
        if ((__int128)oldest->ts < (__int128)ts - d->window_ns || d->tail - d->head >= (uint64_t)d->max_entries)
            expire(d, ts);
    }
    uint64_t hash = key_hash(k0, k1), free_at;
    uint64_t pos = table_find(d, hash, k0, k1, &free_at);
    int fast = 0 <= source && source < FAST_SOURCES;
    if (pos == EMPTY) {
        if (d->tail - d->head == d->ring_cap && ring_grow(d) < 0) return -1;
        if (2 * (d->tail - d->head + 1) > d->table_cap) {
            if (table_resize(d, 2 * d->table_cap) < 0) return -1;
            table_find(d, hash, k0, k1, &free_at);
        }
        General *g = NULL;
        if (!fast && !(g = general_new(d->tail, source, 0))) return -1;
        Slot *s = slot_at(d, d->tail);
        s->ts = ts;
        Py_INCREF(ref);
        s->ref = ref;
        s->k0 = k0;
        s->k1 = k1;
        s->general = g;
        s->first = fast ? (uint8_t)source : 0;
        s->mask = 0;
        s->owner = 1;
        d->table[free_at] = (Bucket){hash, d->tail};
        d->decided = d->tail++;
        d->originals++;
        return 0;
    }
    Slot *s = slot_at(d, pos);
    if (!s->general) {
        if (fast && source != s->first && !(s->mask & (1u << source)) && pos >= d->joined[source]) {
            s->mask |= (uint8_t)(1u << source);
            d->copies++;
            *orig_ts = s->ts;
            *orig_ref = s->ref;
            d->decided = pos;
            return 1;
        }
        /* The same source again (a real repeat of these bytes), one that joined after this original arrived, or a
           source beyond 7: count per source. */
        if (!(s->general = general_new(pos, s->first, s->mask))) return -1;
    }
    General *g = s->general;  /* s is not used below: a new slot may move the ring */
    int64_t *n = general_next(g, source);
    if (!n) return -1;
    Py_ssize_t at = *n > g->start ? (Py_ssize_t)*n : g->start;
    uint64_t joined = joined_at(d, source);
    if (at < g->n_originals && g->originals[at] < joined) at = general_seek(g, at, joined);
    if (at == g->n_originals) {
        /* A further original of these bytes: a slot of its own, so that it leaves the window at its own time. */
        if ((d->tail - d->head == d->ring_cap && ring_grow(d) < 0) || general_add_original(g, d->tail) < 0)
            return -1;
        *n = g->n_originals;  /* after it (general_add_original may have moved the live ones to the front) */
        Slot *t = slot_at(d, d->tail);
        t->ts = ts;
        Py_INCREF(ref);
        t->ref = ref;
        t->k0 = k0;
        t->k1 = k1;
        t->general = NULL;
        t->first = t->mask = t->owner = 0;
        d->decided = d->tail++;
        d->originals++;
        return 0;
    }
    *n = at + 1;
    d->copies++;
    d->decided = g->originals[at];
    Slot *o = slot_at(d, d->decided);
    *orig_ts = o->ts;
    *orig_ref = o->ref;
    return 1;
}

/* observe (below) while a source is settling or awaiting: decide, with the joins' bookkeeping around it. */
static int observe_joined(Deduper *d, int64_t ts, int64_t source, uint64_t k0, uint64_t k1, PyObject *ref,
                          int64_t *orig_ts, PyObject **orig_ref) {
    int settling = d->n_settling && is_settling(d, source);
    if (settling && awaiting_reserve(d) < 0) return -1;
    int won = decide(d, ts, source, k0, k1, ref, orig_ts, orig_ref);
    if (won < 0) return -1;
    if (d->n_awaiting) confirm(d, source, won, d->decided);
    if (settling) settle(d, source, d->decided, won == 0);
    return won;
}

/* One arrival: 0 for an original; 1 for a copy, with its original in *orig_ts / *orig_ref (borrowed); -1 on error.
   Exactly dedupe.py's observe_digest. */
static inline int observe(Deduper *d, int64_t ts, int64_t source, uint64_t k0, uint64_t k1, PyObject *ref,
                          int64_t *orig_ts, PyObject **orig_ref) {
    if (d->n_settling | d->n_awaiting) return observe_joined(d, ts, source, k0, k1, ref, orig_ts, orig_ref);
    return decide(d, ts, source, k0, k1, ref, orig_ts, orig_ref);
}

/* --- argument conversion ---------------------------------------------------------------------------------- */

static int as_int64(PyObject *o, int64_t *out, const char *what) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

static int as_key(PyObject *o, uint64_t *k0, uint64_t *k1) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != KEY_BYTES) {
        PyErr_SetString(PyExc_TypeError, "a dedupe key is the 16 bytes of a digest");
        return -1;
    }
    const char *p = PyBytes_AS_STRING(o);
    memcpy(k0, p, 8);
    memcpy(k1, p + 8, 8);
    return 0;
}

static int as_ref(PyObject *o) {
    if (PyLong_Check(o)) return 0;
    PyErr_Format(PyExc_TypeError, "ref must be an int, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
}

/* --- the type ----------------------------------------------------------------------------------------------- */

static int Deduper_init(Deduper *d, PyObject *args, PyObject *kwds) {
    static char *names[] = {"window_ns", "max_entries", NULL};
    long long window_ns = 2000000000LL;
    Py_ssize_t max_entries = 200000;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Ln", names, &window_ns, &max_entries)) return -1;
    if (window_ns <= 0 || max_entries <= 0) {
        PyErr_SetString(PyExc_ValueError, "the dedupe window must be positive");
        return -1;
    }
    if (d->ring) {  /* __init__ called again: start over */
        for (uint64_t pos = d->head; pos < d->tail; pos++) slot_release(slot_at(d, pos));
        PyMem_Free(d->ring);
        PyMem_Free(d->table);
        d->ring = NULL;
        d->table = NULL;
    }
    d->window_ns = window_ns;
    d->max_entries = max_entries;
    d->head = d->tail = 0;
    d->originals = d->copies = 0;
    memset(d->joined, 0, sizeof d->joined);
    d->settling = 0;
    d->n_joined_other = d->n_settling = d->n_awaiting = 0;
    d->ring_cap = 1024;
    if (!(d->ring = PyMem_Malloc(d->ring_cap * sizeof(Slot)))) { PyErr_NoMemory(); return -1; }
    return table_resize(d, 2048);
}

static void Deduper_dealloc(Deduper *d) {
    if (d->ring)
        for (uint64_t pos = d->head; pos < d->tail; pos++) slot_release(slot_at(d, pos));
    PyMem_Free(d->ring);
    PyMem_Free(d->table);
    PyMem_Free(d->joined_other);
    PyMem_Free(d->awaiting);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static int ready(Deduper *d) {
    if (d->ring) return 0;
    PyErr_SetString(PyExc_RuntimeError, "Deduper.__init__ was not called");
    return -1;
}

static PyObject *Deduper_observe_digest(Deduper *d, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "observe_digest(ts_ns, source, key, ref) takes 4 arguments");
        return NULL;
    }
    int64_t ts, source, orig_ts;
    uint64_t k0, k1;
    PyObject *orig_ref;
    if (ready(d) < 0 || as_int64(args[0], &ts, "ts_ns") < 0 || as_int64(args[1], &source, "source") < 0 ||
        as_key(args[2], &k0, &k1) < 0 || as_ref(args[3]) < 0)
        return NULL;
    int won = observe(d, ts, source, k0, k1, args[3], &orig_ts, &orig_ref);
    if (won < 0) return NULL;
    if (!won) Py_RETURN_NONE;
    PyObject *t = PyLong_FromLongLong(orig_ts);
    if (!t) return NULL;
    Py_INCREF(orig_ref);
    PyObject *pair = PyTuple_New(2);
    if (!pair) { Py_DECREF(t); Py_DECREF(orig_ref); return NULL; }
    PyTuple_SET_ITEM(pair, 0, t);
    PyTuple_SET_ITEM(pair, 1, orig_ref);
    return pair;
}

static PyObject *Deduper_join(Deduper *d, PyObject *arg) {
    int64_t source;
    if (ready(d) < 0 || as_int64(arg, &source, "source") < 0 || join(d, source) < 0) return NULL;
    Py_RETURN_NONE;
}

typedef struct { Py_ssize_t index; int64_t ts; PyObject *ref; } Copy;  /* ref owned */

static PyObject *Deduper_observe_batch(Deduper *d, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "observe_batch(stamps, sources, keys, refs) takes 4 arguments");
        return NULL;
    }
    if (ready(d) < 0) return NULL;
    PyObject *cols[4] = {NULL, NULL, NULL, NULL}, *result = NULL;
    Copy *copies = NULL;
    Py_ssize_t n_copies = 0, n = 0;
    for (int c = 0; c < 4; c++) {
        if (!(cols[c] = PySequence_Fast(args[c], "observe_batch takes four sequences"))) goto done;
        Py_ssize_t len = PySequence_Fast_GET_SIZE(cols[c]);
        if (c && len != n) {
            PyErr_SetString(PyExc_ValueError, "observe_batch: the four columns differ in length");
            goto done;
        }
        n = len;
    }
    PyObject **stamps = PySequence_Fast_ITEMS(cols[0]), **sources = PySequence_Fast_ITEMS(cols[1]);
    PyObject **keys = PySequence_Fast_ITEMS(cols[2]), **refs = PySequence_Fast_ITEMS(cols[3]);
    if (n && !(copies = PyMem_Malloc((size_t)n * sizeof(Copy)))) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t ts, source, orig_ts;
        uint64_t k0, k1;
        PyObject *orig_ref;
        if (as_int64(stamps[i], &ts, "ts_ns") < 0 || as_int64(sources[i], &source, "source") < 0 ||
            as_key(keys[i], &k0, &k1) < 0 || as_ref(refs[i]) < 0)
            goto done;
        int won = observe(d, ts, source, k0, k1, refs[i], &orig_ts, &orig_ref);
        if (won < 0) goto done;
        if (won) {
            Py_INCREF(orig_ref);  /* a later arrival of this batch may expire it */
            copies[n_copies++] = (Copy){i, orig_ts, orig_ref};
        }
    }
    PyObject *at = PyList_New(n_copies), *ts_col = PyList_New(n_copies), *ref_col = PyList_New(n_copies);
    if (!at || !ts_col || !ref_col) goto lists_failed;
    for (Py_ssize_t k = 0; k < n_copies; k++) {
        PyObject *index = PyLong_FromSsize_t(copies[k].index), *t = PyLong_FromLongLong(copies[k].ts);
        if (!index || !t) { Py_XDECREF(index); Py_XDECREF(t); goto lists_failed; }
        PyList_SET_ITEM(at, k, index);
        PyList_SET_ITEM(ts_col, k, t);
        PyList_SET_ITEM(ref_col, k, copies[k].ref);
        copies[k].ref = NULL;
    }
    result = PyTuple_Pack(3, at, ts_col, ref_col);
lists_failed:
    Py_XDECREF(at);
    Py_XDECREF(ts_col);
    Py_XDECREF(ref_col);
done:
    for (Py_ssize_t k = 0; k < n_copies; k++) Py_XDECREF(copies[k].ref);
    PyMem_Free(copies);
    for (int c = 0; c < 4; c++) Py_XDECREF(cols[c]);
    return result;
}

/* The state as plain values, for tests: (absolute position of the oldest original, [(ts, ref, key)] of every live
   original, oldest first, {key: ([(ts, ref)] live originals, {source: arrivals since it joined paired with them,
   when not 0})}, {source: join position, when not 0}). dedupe.py's `_state` gives the same for its own. */
static PyObject *Deduper_state(Deduper *d, PyObject *Py_UNUSED(ignored)) {
    if (ready(d) < 0) return NULL;
    PyObject *order = PyList_New(0), *entries = PyDict_New(), *joins = NULL, *result = NULL;
    if (!order || !entries) goto done;
    for (uint64_t pos = d->head; pos < d->tail; pos++) {
        Slot *s = slot_at(d, pos);
        char raw[KEY_BYTES];
        memcpy(raw, &s->k0, 8);
        memcpy(raw + 8, &s->k1, 8);
        PyObject *key = PyBytes_FromStringAndSize(raw, KEY_BYTES);
        PyObject *row = key ? Py_BuildValue("(LOO)", (long long)s->ts, s->ref, key) : NULL;
        PyObject *originals = PyList_New(0), *counts = PyDict_New(), *entry = NULL;
        int ok = row && originals && counts && PyList_Append(order, row) == 0;
        if (ok && s->owner && s->general) {  /* a later original's slot adds its row only: its entry is the owner's */
            General *g = s->general;
            for (Py_ssize_t i = g->start; ok && i < g->n_originals; i++) {
                Slot *os = slot_at(d, g->originals[i]);
                PyObject *o = Py_BuildValue("(LO)", (long long)os->ts, os->ref);
                ok = o && PyList_Append(originals, o) == 0;
                Py_XDECREF(o);
            }
            for (Py_ssize_t i = 0; ok && i < g->n_sources; i++) {
                Py_ssize_t first = general_seek(g, g->start, joined_at(d, g->sources[i].source));
                if (g->sources[i].n <= first) continue;
                PyObject *k = PyLong_FromLongLong(g->sources[i].source);
                PyObject *v = PyLong_FromLongLong(g->sources[i].n - first);
                ok = k && v && PyDict_SetItem(counts, k, v) == 0;
                Py_XDECREF(k);
                Py_XDECREF(v);
            }
        } else if (ok && s->owner) {
            PyObject *o = Py_BuildValue("(LO)", (long long)s->ts, s->ref);
            ok = o && PyList_Append(originals, o) == 0;
            Py_XDECREF(o);
            for (int source = 0; ok && source < FAST_SOURCES; source++) {
                if ((source != s->first && !(s->mask & (1u << source))) || pos < d->joined[source]) continue;
                PyObject *k = PyLong_FromLong(source), *v = PyLong_FromLong(1);
                ok = k && v && PyDict_SetItem(counts, k, v) == 0;
                Py_XDECREF(k);
                Py_XDECREF(v);
            }
        }
        if (ok && s->owner)
            ok = (entry = PyTuple_Pack(2, originals, counts)) && PyDict_SetItem(entries, key, entry) == 0;
        Py_XDECREF(key);
        Py_XDECREF(row);
        Py_XDECREF(originals);
        Py_XDECREF(counts);
        Py_XDECREF(entry);
        if (!ok) goto done;
    }
    joins = PyDict_New();
    for (Py_ssize_t i = 0; joins && i < FAST_SOURCES + d->n_joined_other; i++) {
        int64_t source = i < FAST_SOURCES ? i : d->joined_other[i - FAST_SOURCES].source;
        uint64_t at = joined_at(d, source);
        int settling = is_settling(d, source);
        Awaiting *w = NULL;
        for (Py_ssize_t k = 0; k < d->n_awaiting; k++)
            if (d->awaiting[k].source == source) w = &d->awaiting[k];
        if (!at && !settling && !w) continue;
        PyObject *awaited = w ? PyLong_FromUnsignedLongLong(w->at) : Py_NewRef(Py_None);
        PyObject *k = PyLong_FromLongLong(source);
        PyObject *v = awaited ? Py_BuildValue("(KON)", (unsigned long long)at, settling ? Py_True : Py_False,
                                              awaited) : NULL;
        int failed = !k || !v || PyDict_SetItem(joins, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (failed) goto done;
    }
    if (joins) result = Py_BuildValue("(KOOO)", (unsigned long long)d->head, order, entries, joins);
done:
    Py_XDECREF(order);
    Py_XDECREF(entries);
    Py_XDECREF(joins);
    return result;
}

static Py_ssize_t Deduper_len(Deduper *d) { return (Py_ssize_t)(d->tail - d->head); }

static PyObject *get_window_ns(Deduper *d, void *Py_UNUSED(closure)) { return PyLong_FromLongLong(d->window_ns); }
static PyObject *get_max_entries(Deduper *d, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(d->max_entries); }
static PyObject *get_originals(Deduper *d, void *Py_UNUSED(closure)) { return PyLong_FromLongLong(d->originals); }
static PyObject *get_copies(Deduper *d, void *Py_UNUSED(closure)) { return PyLong_FromLongLong(d->copies); }

static PyGetSetDef Deduper_getset[] = {
    {"window_ns", (getter)get_window_ns, NULL, "how long an original is remembered (ns)", NULL},
    {"max_entries", (getter)get_max_entries, NULL, "at most this many originals are remembered", NULL},
    {"originals", (getter)get_originals, NULL, "arrivals that were first", NULL},
    {"copies", (getter)get_copies, NULL, "arrivals that repeated an original of another source", NULL},
    {NULL},
};

static PyMethodDef Deduper_methods[] = {
    {"observe_digest", (PyCFunction)(void (*)(void))Deduper_observe_digest, METH_FASTCALL,
     "observe_digest(ts_ns, source, key, ref): None for a first arrival, else (original ts_ns, original ref)."},
    {"observe_batch", (PyCFunction)(void (*)(void))Deduper_observe_batch, METH_FASTCALL,
     "observe_batch(stamps, sources, keys, refs): observe_digest for each in turn; the copies as columns "
     "(index in the batch, original ts_ns, original ref)."},
    {"join", (PyCFunction)Deduper_join, METH_O,
     "join(source): the source's later arrivals pair only with originals that arrive from now on."},
    {"_state", (PyCFunction)Deduper_state, METH_NOARGS, "The state as plain values, for tests."},
    {NULL},
};

static PySequenceMethods Deduper_as_sequence = {.sq_length = (lenfunc)Deduper_len};

static PyTypeObject DeduperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.segment._dedupe.Deduper",
    .tp_basicsize = sizeof(Deduper),
    .tp_dealloc = (destructor)Deduper_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "First-arrival dedupe of redundant copies (see recorder/segment/dedupe.py).",
    .tp_methods = Deduper_methods,
    .tp_getset = Deduper_getset,
    .tp_as_sequence = &Deduper_as_sequence,
    .tp_init = (initproc)Deduper_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_dedupe", .m_doc = "The Deduper's C implementation.", .m_size = -1};

PyMODINIT_FUNC PyInit__dedupe(void) {
    if (PyType_Ready(&DeduperType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&DeduperType);
    if (PyModule_AddObject(m, "Deduper", (PyObject *)&DeduperType) < 0) {
        Py_DECREF(&DeduperType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
