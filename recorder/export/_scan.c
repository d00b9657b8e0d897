/* recorder.export._scan: the export's C fast path (see flatten.py for the two Python paths it sits in front of).

A Scanner reads a block of records (ts_ns, conn, kind, payload) and, for every TEXT payload that is strict
JSON of exactly the documented envelope shape, writes its values straight into column buffers. Everything
else — any other kind, any doubt — is handed back by position, and flatten.py's Python paths take it; so the
scanner only ever has to be right about what it accepts, never about what it refuses.

It knows no IME field names: the Python side passes the envelope keys and, per table, the wire path and kind
of every column (from schema.py) at construction. The shape it accepts, exactly:
  - one JSON object holding the channel key, ONE of the two identifier keys, the timestamp key and the data key,
    nothing else, each once; whitespace between tokens as JSON allows it;
  - channel and identifier: strings (identifier not empty) without escapes, valid UTF-8 (decoded strictly, once
    per distinct value, into a per-batch dictionary);
  - timestamp: "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z" in ASCII digits, in range, years 1900-2261 (so that ns fit int64);
  - data: an object of at least one known section, nothing else, none null; each section an object with exactly
    its known keys (nested objects likewise), every leaf either null or, for an integer column, a JSON integer
    of at most 18 digits without a leading zero (so it fits int64; "-0" is left to Python), for a string
    column a string of printable ASCII without escapes;
  - nothing after the object but whitespace.
The Python parser reads every accepted frame to the same values (tests check it, byte-mutation fuzzing too).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KIND_TEXT 1 /* RecordKind.TEXT (recorder/model/record.py); exported as KIND_TEXT and checked by tests */

enum { K_OBJ = 0, K_INT = 1, K_STR = 2 };
#define MAXK 32
#define MAXT 8
#define MAXCOL 64

typedef struct { char *p; Py_ssize_t len, cap; } Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p; b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (n == 0) return 0;  /* the buffer may not exist yet: memcpy from/to NULL is undefined even for 0 bytes */
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static void buf_free(Buf *b) { PyMem_Free(b->p); b->p = NULL; b->len = b->cap = 0; }

typedef struct Node Node;
typedef struct { char *key; Py_ssize_t klen; int kind; int col; Node *obj; } Child;
struct Node { int n; Child c[MAXK]; };

typedef struct {
    char *key; Py_ssize_t klen;   /* the section's key under data */
    Node *root;
    int ncols, nstrcol;
    int kind[MAXCOL];
    int strcol[MAXCOL];
    PyObject *layout;             /* what was passed in, returned by layout() */
    int collect;
    Py_ssize_t rows;
    Buf fi;                       /* int32 frame index of each row */
    Buf val[MAXCOL];              /* int64 values, or int32 end offsets for a string column */
    Buf sdata[MAXCOL];            /* string bytes */
    Buf valid[MAXCOL];            /* one byte per row */
} Table;
/* Buffers hold `rows` committed values (string offsets: rows + 1); a frame writes at row `rows` and commits by
   counting it, so a refused frame leaves nothing behind but string bytes, which are cut back. */

/* A per-batch dictionary of strings: raw bytes -> index, the decoded str values in `values`. */
typedef struct { uint64_t h; Py_ssize_t off, len; int32_t idx; int8_t allowed; int8_t used; } Slot;
typedef struct { Slot *slots; Py_ssize_t cap, count; Buf arena; PyObject *values; } Dict;

typedef struct {
    PyObject_HEAD
    char *ekey[5]; Py_ssize_t eklen[5];   /* channel, id, name, timestamp, data */
    int ntables;
    Table t[MAXT];
    PyObject *wanted;                     /* a set of contracts, or None */
    Py_ssize_t frames;
    Buf recv, shard, conn, seg, record, server, contract, idf, channel, seq;
    Dict contracts, channels;
    Py_ssize_t parsed, filtered;
    int nstr;
    Buf *strbuf[MAXT * MAXCOL];           /* every string column's bytes */
} Scanner;

/* ---- dictionary ------------------------------------------------------------------------------------------ */

static uint64_t fnv(const char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ULL; }
    return h;
}

static int dict_init(Dict *d) {
    d->cap = 64; d->count = 0;
    d->slots = PyMem_Calloc((size_t)d->cap, sizeof(Slot));
    d->values = PyList_New(0);
    d->arena.len = 0;
    if (!d->slots || !d->values) { PyErr_NoMemory(); return -1; }
    return 0;
}

static void dict_free(Dict *d) { PyMem_Free(d->slots); d->slots = NULL; buf_free(&d->arena); Py_CLEAR(d->values); }

static int dict_grow(Dict *d) {
    Py_ssize_t cap = d->cap * 2;
    Slot *slots = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (!slots) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < d->cap; i++) {
        if (!d->slots[i].used) continue;
        Py_ssize_t j = (Py_ssize_t)(d->slots[i].h & (uint64_t)(cap - 1));
        while (slots[j].used) j = (j + 1) & (cap - 1);
        slots[j] = d->slots[i];
    }
    PyMem_Free(d->slots);
    d->slots = slots; d->cap = cap;
    return 0;
}

/* Index of s in the dictionary, added if new; -2 if not valid UTF-8 (refuse the frame), -1 on error.
   With `wanted` (a set), *allowed says whether the value is in it; a value not wanted is remembered as such
   (so it is decoded once) but gets no index: the dictionary holds only values that have rows. */
static int32_t dict_index(Dict *d, const char *s, Py_ssize_t n, PyObject *wanted, int *allowed) {
    uint64_t h = fnv(s, n);
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(d->cap - 1));
    while (d->slots[j].used) {
        Slot *sl = &d->slots[j];
        if (sl->h == h && sl->len == n && (n == 0 || memcmp(d->arena.p + sl->off, s, (size_t)n) == 0)) {
            *allowed = sl->allowed;
            return sl->idx;
        }
        j = (j + 1) & (d->cap - 1);
    }
    PyObject *str = PyUnicode_DecodeUTF8(s, n, "strict");
    if (!str) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
        PyErr_Clear();
        return -2;
    }
    int ok = 1;
    if (wanted != Py_None) {
        ok = PySet_Contains(wanted, str);
        if (ok < 0) { Py_DECREF(str); return -1; }
    }
    Py_ssize_t off = d->arena.len;
    int32_t idx = ok ? (int32_t)PyList_GET_SIZE(d->values) : 0;
    if (buf_put(&d->arena, s, n) < 0 || (ok && PyList_Append(d->values, str) < 0)) { Py_DECREF(str); return -1; }
    Py_DECREF(str);
    Slot *sl = &d->slots[j];
    sl->h = h; sl->off = off; sl->len = n; sl->idx = idx; sl->allowed = (int8_t)ok; sl->used = 1;
    d->count++;
    *allowed = ok;
    if (d->count * 2 > d->cap && dict_grow(d) < 0) return -1;
    return idx;
}

/* ---- JSON pieces ------------------------------------------------------------------------------------------- */

/* JSON whitespace; the first test lets every other byte through in one comparison (compact JSON is the norm).
   Scans rely on the NUL after the payload (CPython keeps one after every bytes object) to stop, never on length:
   a NUL is no token anywhere, so it is refused wherever it is met, and the end is checked once, at the end. */
#define WS(p)                                                                                                     \
    while ((unsigned char)*(p) <= ' ' && (*(p) == ' ' || *(p) == '\n' || *(p) == '\r' || *(p) == '\t')) (p)++

/* p at a quote: is the key there exactly `key` (so it needs no other check: known keys are plain ASCII)? */
static inline int key_is(const char *p, const char *e, const char *key, Py_ssize_t kn) {
    return e - p > kn + 1 && p[kn + 1] == '"' && memcmp(p + 1, key, (size_t)kn) == 0;
}

/* Bytes that end a string scan: the quote, a backslash (escapes are left to Python), control characters
   (not allowed in JSON strings; this includes the NUL that CPython keeps after every bytes object's content,
   so no scan runs past the payload), and in the ASCII table every byte >= 0x80. */
static unsigned char STOP_UTF8[256], STOP_ASCII[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++) {
        STOP_UTF8[c] = c == '"' || c == '\\' || c < 0x20;
        STOP_ASCII[c] = STOP_UTF8[c] || c >= 0x80;
    }
}

/* A string at p (the opening quote): *s, *n its raw content. NULL on an escape, a control character or the end.
   ascii: also refuse bytes >= 0x80 (used for string columns, which are not UTF-8-checked otherwise). */
static inline const char *jstring(const char *p, const char **s, Py_ssize_t *n, int ascii) {
    const unsigned char *stop = ascii ? STOP_ASCII : STOP_UTF8;
    const char *q = ++p;
    while (!stop[(unsigned char)*q]) q++;
    if (*q != '"') return NULL;
    *s = p; *n = q - p;
    return q + 1;
}

/* A JSON integer that surely fits int64 (at most 18 digits); NULL for anything else (fraction, exponent,
   leading zero, "-0", more digits), which Python reads. */
static inline const char *jint(const char *p, int64_t *out) {
    int neg = *p == '-';
    p += neg;
    const char *start = p;
    uint64_t v = 0;  /* unsigned: a long number wraps harmlessly before its length refuses it */
    unsigned d;
    while ((d = (unsigned)(unsigned char)*p - '0') < 10) { v = v * 10 + d; p++; }
    Py_ssize_t len = p - start;
    if (len < 1 || len > 18 || (*start == '0' && (len > 1 || neg)) || *p == '.' || *p == 'e' || *p == 'E')
        return NULL;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return p;
}

static inline int is_null(const char *p, const char *e) { return e - p >= 4 && memcmp(p, "null", 4) == 0; }

/* An object of node's exact shape at p ('{'); leaves written at row `row` of table t. NULL: refuse. */
static const char *jobject(Table *t, Node *node, const char *p, const char *e, Py_ssize_t row) {
    uint64_t seen = 0;
    int hint = 0;
    p++;
    WS(p);
    if (*p == '}') return node->n == 0 ? p + 1 : NULL;
    for (;;) {
        if (*p != '"') return NULL;
        /* Keys usually come in the documented order: try the one after the last match first, in place. */
        int i = hint;
        Child *c = NULL;
        if (key_is(p, e, node->c[i].key, node->c[i].klen)) {
            c = &node->c[i];
            p += c->klen + 2;
        } else {
            const char *k; Py_ssize_t kn;
            if (!(p = jstring(p, &k, &kn, 1))) return NULL;
            for (int tries = 0; tries < node->n; tries++, i = (i + 1 == node->n) ? 0 : i + 1) {
                if (node->c[i].klen == kn && memcmp(node->c[i].key, k, (size_t)kn) == 0) { c = &node->c[i]; break; }
            }
        }
        if (!c || (seen >> i) & 1) return NULL;  /* unknown or duplicate key */
        seen |= (uint64_t)1 << i;
        hint = (i + 1 == node->n) ? 0 : i + 1;
        WS(p);
        if (*p != ':') return NULL;
        p++;
        WS(p);
        if (c->kind == K_OBJ) {
            if (*p != '{' || !(p = jobject(t, c->obj, p, e, row))) return NULL;
        } else if (*p == 'n') {
            if (!is_null(p, e)) return NULL;
            p += 4;
            t->valid[c->col].p[row] = 0;
            if (c->kind == K_STR) ((int32_t *)t->val[c->col].p)[row + 1] = (int32_t)t->sdata[c->col].len;
        } else if (c->kind == K_INT) {
            int64_t v;
            if (!(p = jint(p, &v))) return NULL;
            ((int64_t *)t->val[c->col].p)[row] = v;
            t->valid[c->col].p[row] = 1;
        } else {
            const char *s; Py_ssize_t sn;
            if (*p != '"' || !(p = jstring(p, &s, &sn, 1))) return NULL;
            Buf *d = &t->sdata[c->col];
            if (d->len + sn > INT32_MAX || buf_put(d, s, sn) < 0) return NULL;  /* rare: Python takes it */
            ((int32_t *)t->val[c->col].p)[row + 1] = (int32_t)d->len;
            t->valid[c->col].p[row] = 1;
        }
        WS(p);
        if (*p == ',') { p++; WS(p); continue; }
        if (*p != '}') return NULL;
        p++;
        break;
    }
    uint64_t all = node->n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << node->n) - 1);
    return seen == all ? p : NULL;
}

static const int MONTH_DAYS[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    /* As message.py's _days_from_civil (Hinnant); y >= 1899 here, so C division is floor division. */
    y -= m <= 2;
    int64_t era = y / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static inline int digits(const char *s, int n, int64_t *out) {
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* The common timestamp form only (message.py's parse_timestamp_ns reads every other); 0: refuse. */
static int timestamp_ns(const char *s, Py_ssize_t n, int64_t *out) {
    int64_t Y, M, D, h, m, sec, frac = 0;
    if (n < 20 || n > 30 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':'
        || s[n - 1] != 'Z')
        return 0;
    if (!digits(s, 4, &Y) || !digits(s + 5, 2, &M) || !digits(s + 8, 2, &D) || !digits(s + 11, 2, &h)
        || !digits(s + 14, 2, &m) || !digits(s + 17, 2, &sec))
        return 0;
    if (n > 20) {
        int fn = (int)n - 21;
        if (s[19] != '.' || fn < 1 || fn > 9 || !digits(s + 20, fn, &frac)) return 0;
        for (int i = fn; i < 9; i++) frac *= 10;
    }
    if (Y < 1900 || Y > 2261 || M < 1 || M > 12 || D < 1 || D > MONTH_DAYS[M - 1] || h > 23 || m > 59 || sec > 60)
        return 0;
    if (M == 2 && D == 29 && !(Y % 4 == 0 && (Y % 100 != 0 || Y % 400 == 0))) return 0;
    *out = (days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec) * 1000000000 + frac;
    return 1;
}

/* ---- one frame --------------------------------------------------------------------------------------------- */

/* Room for `more` rows in every table (string bytes excepted: those grow as they are written). */
static int reserve_rows(Scanner *S, Py_ssize_t more) {
    for (int i = 0; i < S->ntables; i++) {
        Table *t = &S->t[i];
        Py_ssize_t rows = t->rows + more + 1;
        t->fi.len = t->rows * 4;
        if (buf_reserve(&t->fi, more * 4) < 0) return -1;
        for (int c = 0; c < t->ncols; c++) {
            t->val[c].len = t->kind[c] == K_STR ? (t->rows + 1) * 4 : t->rows * 8;
            t->valid[c].len = t->rows;
            if (buf_reserve(&t->val[c], rows * 8 - t->val[c].len) < 0 || buf_reserve(&t->valid[c], more) < 0)
                return -1;
        }
    }
    Buf *frame_bufs[] = {&S->recv, &S->shard, &S->conn, &S->seg, &S->record, &S->server, &S->contract, &S->idf,
                         &S->channel, &S->seq};
    for (size_t i = 0; i < sizeof frame_bufs / sizeof *frame_bufs; i++)
        if (buf_reserve(frame_bufs[i], more * 8) < 0) return -1;
    return 0;
}

#define PUT(buf, type, value) (((type *)(buf).p)[(buf).len / (Py_ssize_t)sizeof(type)] = (value), \
                               (buf).len += (Py_ssize_t)sizeof(type))

/* 1: taken (a row or filtered out), 0: refused (Python takes it), -1: error. */
static int scan_one(Scanner *S, const char *p, Py_ssize_t len, int64_t ts, int64_t conn, int64_t record,
                    int32_t shard, int32_t seg, int64_t seq) {
    const char *e = p + len;
    const char *chan = NULL, *ident = NULL, *stamp = NULL;
    Py_ssize_t chan_n = 0, ident_n = 0, stamp_n = 0;
    int id_field = -1, seen = 0, present = 0;
    Py_ssize_t str_len[MAXT * MAXCOL];
    for (int i = 0; i < S->nstr; i++) str_len[i] = S->strbuf[i]->len;
    WS(p);
    if (*p != '{') return 0;
    p++;
    WS(p);
    for (;;) {
        const char *k; Py_ssize_t kn;
        if (*p != '"' || !(p = jstring(p, &k, &kn, 1))) goto refuse;
        int which = -1;
        for (int i = 0; i < 5; i++)
            if (S->eklen[i] == kn && memcmp(S->ekey[i], k, (size_t)kn) == 0) { which = i; break; }
        if (which < 0) goto refuse;
        int bit = which == 2 ? 1 : which;  /* the two identifier keys share one place: only one of them */
        if (seen & (1 << bit)) goto refuse;
        seen |= 1 << bit;
        WS(p);
        if (*p != ':') goto refuse;
        p++;
        WS(p);
        if (which == 4) {
            if (*p != '{') goto refuse;
            p++;
            WS(p);
            for (;;) {
                const char *sk; Py_ssize_t skn;
                if (*p != '"' || !(p = jstring(p, &sk, &skn, 1))) goto refuse;
                int ti = -1;
                for (int i = 0; i < S->ntables; i++)
                    if (S->t[i].klen == skn && memcmp(S->t[i].key, sk, (size_t)skn) == 0) { ti = i; break; }
                if (ti < 0 || (present & (1 << ti))) goto refuse;
                present |= 1 << ti;
                WS(p);
                if (*p != ':') goto refuse;
                p++;
                WS(p);
                if (*p != '{' || !(p = jobject(&S->t[ti], S->t[ti].root, p, e, S->t[ti].rows)))
                    goto refuse;
                WS(p);
                if (*p == ',') { p++; WS(p); continue; }
                if (*p != '}') goto refuse;
                p++;
                break;
            }
        } else {
            const char *s; Py_ssize_t n;
            if (*p != '"' || !(p = jstring(p, &s, &n, which == 3))) goto refuse;
            if (which == 0) { chan = s; chan_n = n; }
            else if (which == 3) { stamp = s; stamp_n = n; }
            else { ident = s; ident_n = n; id_field = which - 1; }
        }
        WS(p);
        if (*p == ',') { p++; WS(p); continue; }
        if (*p != '}') goto refuse;
        p++;
        break;
    }
    WS(p);
    if (p != e || seen != 0x1b || !present || ident_n == 0) goto refuse;  /* bits 0, 1, 3, 4 */
    int64_t server;
    if (!timestamp_ns(stamp, stamp_n, &server)) goto refuse;
    int allowed, unused;
    int32_t ci = dict_index(&S->contracts, ident, ident_n, S->wanted, &allowed);
    if (ci == -1) return -1;
    if (ci == -2) goto refuse;
    int32_t chi = dict_index(&S->channels, chan, chan_n, Py_None, &unused);
    if (chi == -1) return -1;
    if (chi == -2) goto refuse;
    if (!allowed) {
        S->filtered++;
        goto drop;
    }
    int32_t fi = (int32_t)S->frames;
    int32_t shard32 = shard, seg32 = seg;
    PUT(S->recv, int64_t, ts);
    PUT(S->shard, int32_t, shard32);
    PUT(S->conn, int64_t, conn);
    PUT(S->seg, int32_t, seg32);
    PUT(S->record, int64_t, record);
    PUT(S->server, int64_t, server);
    PUT(S->contract, int32_t, ci);
    PUT(S->idf, int32_t, id_field);
    PUT(S->channel, int32_t, chi);
    PUT(S->seq, int64_t, seq);
    S->frames++;
    S->parsed++;
    for (int i = 0; i < S->ntables; i++) {
        Table *t = &S->t[i];
        if (!(present & (1 << i)) || !t->collect) {
            for (int c = 0; c < t->nstrcol; c++) t->sdata[t->strcol[c]].len = ((int32_t *)t->val[t->strcol[c]].p)[t->rows];
            continue;
        }
        PUT(t->fi, int32_t, fi);
        t->rows++;
    }
    return 1;
refuse:
    for (int i = 0; i < S->nstr; i++) S->strbuf[i]->len = str_len[i];
    return 0;
drop:
    for (int i = 0; i < S->nstr; i++) S->strbuf[i]->len = str_len[i];
    return 1;
}

/* ---- the type ----------------------------------------------------------------------------------------------- */

static void node_free(Node *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) { PyMem_Free(n->c[i].key); node_free(n->c[i].obj); }
    PyMem_Free(n);
}

static int table_start(Table *t) {
    t->rows = 0;
    t->fi.len = 0;
    for (int c = 0; c < t->ncols; c++) {
        t->val[c].len = 0;
        t->sdata[c].len = 0;
        t->valid[c].len = 0;
        if (t->kind[c] == K_STR) {
            int32_t zero = 0;
            if (buf_put(&t->val[c], &zero, 4) < 0) return -1;  /* offsets start with 0 */
        }
    }
    return 0;
}

static char *copy_key(PyObject *o, Py_ssize_t *n) {
    const char *s = PyUnicode_AsUTF8AndSize(o, n);
    if (!s) return NULL;
    char *k = PyMem_Malloc((size_t)*n + 1);
    if (!k) { PyErr_NoMemory(); return NULL; }
    memcpy(k, s, (size_t)*n + 1);
    return k;
}

/* Add the leaf at `path` (a tuple of str under the section) to the tree. */
static int add_path(Node *root, PyObject *path, int kind, int col) {
    Node *node = root;
    Py_ssize_t depth = PyTuple_GET_SIZE(path);
    for (Py_ssize_t d = 0; d < depth; d++) {
        PyObject *key = PyTuple_GET_ITEM(path, d);
        Py_ssize_t kn;
        const char *ks = PyUnicode_AsUTF8AndSize(key, &kn);
        if (!ks) return -1;
        int last = d == depth - 1, found = -1;
        for (int i = 0; i < node->n; i++)
            if (node->c[i].klen == kn && memcmp(node->c[i].key, ks, (size_t)kn) == 0) { found = i; break; }
        if (found >= 0) {
            if (last || node->c[found].kind != K_OBJ) {
                PyErr_SetString(PyExc_ValueError, "a column path repeats or runs through another column");
                return -1;
            }
            node = node->c[found].obj;
            continue;
        }
        if (node->n >= MAXK) { PyErr_SetString(PyExc_ValueError, "too many keys in one object"); return -1; }
        Child *c = &node->c[node->n];
        if (!(c->key = copy_key(key, &c->klen))) return -1;
        node->n++;
        if (last) { c->kind = kind; c->col = col; c->obj = NULL; }
        else {
            c->kind = K_OBJ;
            c->col = -1;
            if (!(c->obj = PyMem_Calloc(1, sizeof(Node)))) { PyErr_NoMemory(); return -1; }
            node = c->obj;
        }
    }
    return 0;
}

static int check_ascii(PyObject *o) {
    if (!PyUnicode_Check(o) || !PyUnicode_IS_ASCII(o) || PyUnicode_GET_LENGTH(o) == 0) {
        PyErr_SetString(PyExc_ValueError, "keys must be non-empty ASCII strings");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(o); i++) {
        Py_UCS4 ch = PyUnicode_READ_CHAR(o, i);
        if (ch < 0x20 || ch == '"' || ch == '\\') {
            PyErr_SetString(PyExc_ValueError, "keys must not need escaping in JSON");
            return -1;
        }
    }
    return 0;
}

/* Scanner(envelope_keys, tables, wanted=None)
   envelope_keys: (channel, id, name, timestamp, data)
   tables: [(section key, [(path tuple, "int" | "str"), ...] in column order, collect: bool), ...] */
static int Scanner_init(Scanner *S, PyObject *args, PyObject *kw) {
    static char *names[] = {"envelope_keys", "tables", "wanted", NULL};
    PyObject *ekeys, *tables, *wanted = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!|O", names, &PyTuple_Type, &ekeys, &PyList_Type, &tables,
                                     &wanted))
        return -1;
    if (S->ntables || S->ekey[0]) { PyErr_SetString(PyExc_TypeError, "Scanner is initialised once"); return -1; }
    if (PyTuple_GET_SIZE(ekeys) != 5) { PyErr_SetString(PyExc_ValueError, "five envelope keys"); return -1; }
    for (int i = 0; i < 5; i++) {
        PyObject *k = PyTuple_GET_ITEM(ekeys, i);
        if (check_ascii(k) < 0 || !(S->ekey[i] = copy_key(k, &S->eklen[i]))) return -1;
    }
    if (wanted != Py_None && !PyAnySet_Check(wanted)) {
        PyErr_SetString(PyExc_TypeError, "wanted must be a set or None");
        return -1;
    }
    Py_INCREF(wanted);
    S->wanted = wanted;
    Py_ssize_t nt = PyList_GET_SIZE(tables);
    if (nt < 1 || nt > MAXT) { PyErr_SetString(PyExc_ValueError, "1 to 8 tables"); return -1; }
    for (Py_ssize_t i = 0; i < nt; i++) {
        PyObject *spec = PyList_GET_ITEM(tables, i), *key, *cols;
        int collect;
        if (!PyArg_ParseTuple(spec, "UO!p", &key, &PyList_Type, &cols, &collect) || check_ascii(key) < 0) return -1;
        Table *t = &S->t[S->ntables++];
        t->collect = collect;
        Py_INCREF(spec);
        t->layout = spec;
        if (!(t->key = copy_key(key, &t->klen))) return -1;
        if (!(t->root = PyMem_Calloc(1, sizeof(Node)))) { PyErr_NoMemory(); return -1; }
        Py_ssize_t nc = PyList_GET_SIZE(cols);
        if (nc < 1 || nc > MAXCOL) { PyErr_SetString(PyExc_ValueError, "1 to 64 columns"); return -1; }
        for (Py_ssize_t c = 0; c < nc; c++) {
            PyObject *path; const char *kind;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(cols, c), "O!s", &PyTuple_Type, &path, &kind)) return -1;
            int k = strcmp(kind, "int") == 0 ? K_INT : strcmp(kind, "str") == 0 ? K_STR : -1;
            if (k < 0 || PyTuple_GET_SIZE(path) < 1) {
                PyErr_SetString(PyExc_ValueError, "a column is (non-empty path, 'int' or 'str')");
                return -1;
            }
            for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(path); d++)
                if (check_ascii(PyTuple_GET_ITEM(path, d)) < 0) return -1;
            t->kind[c] = k;
            t->ncols++;
            if (k == K_STR) {
                t->strcol[t->nstrcol++] = (int)c;
                S->strbuf[S->nstr++] = &t->sdata[c];
            }
            if (add_path(t->root, path, k, (int)c) < 0) return -1;
        }
        if (table_start(t) < 0) return -1;
    }
    for (int i = 0; i < S->ntables; i++)
        for (int j = 0; j < i; j++)
            if (S->t[i].klen == S->t[j].klen && memcmp(S->t[i].key, S->t[j].key, (size_t)S->t[i].klen) == 0) {
                PyErr_SetString(PyExc_ValueError, "a section key repeats");
                return -1;
            }
    if (dict_init(&S->contracts) < 0 || dict_init(&S->channels) < 0) return -1;
    return 0;
}

static void Scanner_dealloc(Scanner *S) {
    for (int i = 0; i < 5; i++) PyMem_Free(S->ekey[i]);
    for (int i = 0; i < S->ntables; i++) {
        Table *t = &S->t[i];
        PyMem_Free(t->key);
        node_free(t->root);
        Py_XDECREF(t->layout);
        buf_free(&t->fi);
        for (int c = 0; c < MAXCOL; c++) { buf_free(&t->val[c]); buf_free(&t->sdata[c]); buf_free(&t->valid[c]); }
    }
    Buf *bufs[] = {&S->recv, &S->shard, &S->conn, &S->seg, &S->record, &S->server, &S->contract, &S->idf,
                   &S->channel, &S->seq};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
    dict_free(&S->contracts);
    dict_free(&S->channels);
    Py_XDECREF(S->wanted);
    Py_TYPE(S)->tp_free((PyObject *)S);
}

static int64_t as_i64(PyObject *o, int *bad) {
    int overflow;
    long long v = PyLong_Check(o) ? PyLong_AsLongLongAndOverflow(o, &overflow) : (overflow = 1, 0);
    if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); *bad = 1; }
    return v;
}

/* scan(records, first_record, shard, segment, lo, hi, seq) -> list of positions refused.
   records: (ts_ns, conn, kind, payload) each; those with ts_ns outside [lo, hi) are skipped as flatten.py does
   (lo/hi beyond int64 mean unbounded); record n's row gets `record` first_record + n and sort key seq + n. */
static PyObject *Scanner_scan(Scanner *S, PyObject *args) {
    PyObject *records, *lo_o, *hi_o;
    long long first, seq;
    int shard, seg;
    if (!S->ntables) { PyErr_SetString(PyExc_TypeError, "Scanner not initialised"); return NULL; }
    if (!PyArg_ParseTuple(args, "OLiiOOL", &records, &first, &shard, &seg, &lo_o, &hi_o, &seq)) return NULL;
    int lo_over, hi_over;
    long long lo = PyLong_AsLongLongAndOverflow(lo_o, &lo_over), hi = PyLong_AsLongLongAndOverflow(hi_o, &hi_over);
    if (PyErr_Occurred()) return NULL;
    int has_lo = lo_over == 0, has_hi = hi_over == 0;
    if (lo_over > 0 || hi_over < 0) has_lo = has_hi = 1, lo = 1, hi = 0;  /* an empty window */
    PyObject *seq_fast = PySequence_Fast(records, "records must be a sequence");
    if (!seq_fast) return NULL;
    PyObject *refused = PyList_New(0);
    if (!refused) { Py_DECREF(seq_fast); return NULL; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq_fast);
    PyObject **items = PySequence_Fast_ITEMS(seq_fast);
    if (reserve_rows(S, n) < 0) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = items[i];
        int bad = 0, rc = 0;
        if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 4) {
            int64_t ts = as_i64(PyTuple_GET_ITEM(r, 0), &bad);
            int64_t conn = as_i64(PyTuple_GET_ITEM(r, 1), &bad);
            int64_t kind = as_i64(PyTuple_GET_ITEM(r, 2), &bad);
            PyObject *payload = PyTuple_GET_ITEM(r, 3);
            if (!bad && ((has_lo && ts < lo) || (has_hi && ts >= hi))) continue;
            if (!bad && kind == KIND_TEXT && PyBytes_CheckExact(payload)) {
                rc = scan_one(S, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), ts, conn,
                              (int64_t)(first + i), (int32_t)shard, (int32_t)seg, (int64_t)(seq + i));
                if (rc < 0) goto error;
            }
        }
        if (rc == 0) {
            PyObject *pos = PyLong_FromSsize_t(i);
            if (!pos || PyList_Append(refused, pos) < 0) { Py_XDECREF(pos); goto error; }
            Py_DECREF(pos);
        }
    }
    Py_DECREF(seq_fast);
    return refused;
error:
    Py_DECREF(seq_fast);
    Py_DECREF(refused);
    return NULL;
}

static PyObject *bytes_of(Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", b->len); }

static Py_ssize_t count_nulls(Buf *valid, Py_ssize_t rows) {
    Py_ssize_t nulls = 0;
    for (Py_ssize_t r = 0; r < rows; r++) nulls += !valid->p[r];
    return nulls;
}

/* Arrow validity bitmap (LSB first) of one byte per row, or None without nulls. */
static PyObject *bitmap(Buf *valid, Py_ssize_t rows, Py_ssize_t nulls) {
    if (!nulls) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (rows + 7) / 8);
    if (!out) return NULL;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    memset(bits, 0, (size_t)(rows + 7) / 8);
    for (Py_ssize_t r = 0; r < rows; r++)
        if (valid->p[r]) bits[r >> 3] |= (unsigned char)(1 << (r & 7));
    return out;
}

/* take() -> dict of the columns collected since the last take (raw little-endian buffers), then start over. */
static PyObject *Scanner_take(Scanner *S, PyObject *noargs) {
    (void)noargs;
    PyObject *out = PyDict_New(), *tables = PyList_New(0);
    if (!out || !tables) goto error;
    struct { const char *name; Buf *b; } cols[] = {
        {"recv", &S->recv}, {"shard", &S->shard}, {"conn", &S->conn}, {"segment", &S->seg},
        {"record", &S->record}, {"server", &S->server}, {"contract", &S->contract},
        {"identifier_field", &S->idf}, {"channel", &S->channel}, {"seq", &S->seq}};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++) {
        PyObject *b = bytes_of(cols[i].b);
        if (!b || PyDict_SetItemString(out, cols[i].name, b) < 0) { Py_XDECREF(b); goto error; }
        Py_DECREF(b);
        cols[i].b->len = 0;
    }
    PyObject *frames = PyLong_FromSsize_t(S->frames);
    if (!frames || PyDict_SetItemString(out, "frames", frames) < 0) { Py_XDECREF(frames); goto error; }
    Py_DECREF(frames);
    if (PyDict_SetItemString(out, "contracts", S->contracts.values) < 0
        || PyDict_SetItemString(out, "channels", S->channels.values) < 0)
        goto error;
    for (int i = 0; i < S->ntables; i++) {
        Table *t = &S->t[i];
        PyObject *colist = PyList_New(t->ncols);
        if (!colist) goto error;
        t->fi.len = t->rows * 4;
        for (int c = 0; c < t->ncols; c++) {
            t->val[c].len = t->kind[c] == K_STR ? (t->rows + 1) * 4 : t->rows * 8;
            Py_ssize_t nulls = count_nulls(&t->valid[c], t->rows);
            PyObject *item = Py_BuildValue("(NNNn)", bytes_of(&t->val[c]),
                                           t->kind[c] == K_STR ? bytes_of(&t->sdata[c]) : Py_NewRef(Py_None),
                                           bitmap(&t->valid[c], t->rows, nulls), nulls);
            if (!item) { Py_DECREF(colist); goto error; }
            PyList_SET_ITEM(colist, c, item);
        }
        PyObject *entry = Py_BuildValue("(nNN)", t->rows, bytes_of(&t->fi), colist);
        if (!entry || PyList_Append(tables, entry) < 0) { Py_XDECREF(entry); goto error; }
        Py_DECREF(entry);
        if (table_start(t) < 0) goto error;
    }
    if (PyDict_SetItemString(out, "tables", tables) < 0) goto error;
    Py_DECREF(tables);
    S->frames = 0;
    dict_free(&S->contracts);
    dict_free(&S->channels);
    if (dict_init(&S->contracts) < 0 || dict_init(&S->channels) < 0) { Py_DECREF(out); return NULL; }
    return out;
error:
    Py_XDECREF(out);
    Py_XDECREF(tables);
    return NULL;
}

static PyObject *Scanner_counts(Scanner *S, PyObject *noargs) {
    (void)noargs;
    PyObject *r = Py_BuildValue("(nn)", S->parsed, S->filtered);
    S->parsed = S->filtered = 0;
    return r;
}

static PyObject *Scanner_layout(Scanner *S, PyObject *noargs) {
    (void)noargs;
    PyObject *keys = PyTuple_New(5), *tables = PyList_New(S->ntables);
    if (!keys || !tables) { Py_XDECREF(keys); Py_XDECREF(tables); return NULL; }
    for (int i = 0; i < 5; i++) PyTuple_SET_ITEM(keys, i, PyUnicode_FromStringAndSize(S->ekey[i], S->eklen[i]));
    for (int i = 0; i < S->ntables; i++) PyList_SET_ITEM(tables, i, Py_NewRef(S->t[i].layout));
    return Py_BuildValue("(NN)", keys, tables);
}

static PyObject *Scanner_pending(Scanner *S, void *closure) { (void)closure; return PyLong_FromSsize_t(S->frames); }

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)Scanner_scan, METH_VARARGS,
     "scan(records, first_record, shard, segment, lo, hi, seq) -> positions refused (for the Python path)"},
    {"take", (PyCFunction)Scanner_take, METH_NOARGS, "take() -> the collected column buffers; starts over"},
    {"counts", (PyCFunction)Scanner_counts, METH_NOARGS, "counts() -> (parsed, filtered out) since the last call"},
    {"layout", (PyCFunction)Scanner_layout, METH_NOARGS, "layout() -> (envelope keys, tables) as given"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Scanner_getset[] = {
    {"pending", (getter)Scanner_pending, NULL, "frames collected since the last take()", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.export._scan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scans envelope-shaped JSON payloads into column buffers; refuses anything else.",
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
    .tp_init = (initproc)Scanner_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_scan", .m_doc = "The export's C fast path.", .m_size = -1};

PyMODINIT_FUNC PyInit__scan(void) {
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    init_tables();
    if (PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0 ||
        PyModule_AddIntConstant(m, "KIND_TEXT", KIND_TEXT) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
