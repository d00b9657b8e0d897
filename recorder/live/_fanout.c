/* The hub's data path in C (recorder/live/fanout.py: PyFanout is the reference, with the same outputs, rows,
 * counters and link state for the same input; tests/test_live_units.py checks it, chunk by chunk).
 *
 * In Python the hub spent about 1 µs a message decoding the worker's stream, naming the contract and framing
 * the message for each relay output: at full speed with ten relay clients it fell behind the worker it serves.
 * Here a record is parsed where it lies in the chunk, its contract found by the router's prefix table (the
 * router's own dict and list of prefix lengths, read in place; a miss calls the router, which parses and learns),
 * and its frame appended to each output that wants the contract, with no Python object made per message unless
 * the publisher needs the rows (`keep`).
 *
 * Wire format (recorder/live/wire.py): hello "<4sHI" (magic IMEL, shard, pid), then records "<IQqHB" (payload
 * length, sequence, receive ts_ns, conn, kind) each followed by its payload. Out: the model's rows (ts_ns, conn,
 * kind, payload) and their contracts; the sequence numbers only as the batch's first and last.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define HELLO_SIZE 10
#define RECORD_SIZE 23
#define MAX_PAYLOAD (64u << 20)
#define KIND_TEXT 1 /* RecordKind.TEXT (recorder/model/record.py); exported as KIND_TEXT and checked by tests */
#define BIG_BUFFER (16 << 20) /* an output buffer larger than this is given back after a take */

static PyObject *WireError; /* recorder.live.wire.WireError */

static inline uint64_t
get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* -- a growable byte buffer ------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int
buffer_reserve(Buffer *b, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    char *p = PyMem_Realloc(b->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int
buffer_append(Buffer *b, const void *src, Py_ssize_t n)
{
    if (buffer_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static void
buffer_free(Buffer *b)
{
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* -- Link: one worker's stream ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Buffer keep;     /* a partial record (or hello) carried to the next chunk */
    Py_ssize_t need; /* bytes `keep` must reach before parsing is worth trying again */
    PyObject *shard; /* None until the hello */
    PyObject *pid;
} Link;

static PyObject *
Link_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Link *self = (Link *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->shard = Py_NewRef(Py_None);
    self->pid = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static void
Link_dealloc(Link *self)
{
    buffer_free(&self->keep);
    Py_CLEAR(self->shard);
    Py_CLEAR(self->pid);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Link_pending(Link *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->keep.len);
}

static PyMemberDef Link_members[] = {
    {"shard", T_OBJECT, offsetof(Link, shard), READONLY, NULL},
    {"pid", T_OBJECT, offsetof(Link, pid), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Link_getset[] = {
    {"pending", (getter)Link_pending, NULL, "bytes of a partial record kept for the next chunk", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.live._fanout.Link",
    .tp_doc = "One worker's stream to the hub: what a partial record left, and the worker's shard and pid.",
    .tp_basicsize = sizeof(Link),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Link_new,
    .tp_dealloc = (destructor)Link_dealloc,
    .tp_members = Link_members,
    .tp_getset = Link_getset,
};

/* -- Fanout ------------------------------------------------------------------------------------------------ */

typedef struct {
    Buffer frames;
    Py_ssize_t messages;
} Output;

typedef struct {
    PyObject_HEAD
    PyObject *prefixes; /* dict: leading bytes -> contract (the router's) */
    PyObject *lengths;  /* list of the prefix lengths in use (the router's) */
    PyObject *resolve;  /* the router's contract(payload) -> str | None, for what no prefix names */
    PyObject *routes;   /* dict: contract -> tuple of output indices */
    Output *outputs;
    Py_ssize_t n_outputs;
    long long unrouted;
} Fanout;

static int
Fanout_traverse(Fanout *self, visitproc visit, void *arg)
{
    Py_VISIT(self->prefixes);
    Py_VISIT(self->lengths);
    Py_VISIT(self->resolve);
    Py_VISIT(self->routes);
    return 0;
}

static int
Fanout_clear(Fanout *self)
{
    Py_CLEAR(self->prefixes);
    Py_CLEAR(self->lengths);
    Py_CLEAR(self->resolve);
    Py_CLEAR(self->routes);
    return 0;
}

static void
free_outputs(Fanout *self)
{
    for (Py_ssize_t i = 0; i < self->n_outputs; i++)
        buffer_free(&self->outputs[i].frames);
    PyMem_Free(self->outputs);
    self->outputs = NULL;
    self->n_outputs = 0;
}

static void
Fanout_dealloc(Fanout *self)
{
    PyObject_GC_UnTrack(self);
    Fanout_clear(self);
    free_outputs(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Fanout_init(Fanout *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"prefixes", "lengths", "resolve", NULL};
    PyObject *prefixes, *lengths, *resolve;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O:Fanout", kwlist, &PyDict_Type, &prefixes, &PyList_Type,
                                     &lengths, &resolve))
        return -1;
    if (!PyCallable_Check(resolve)) {
        PyErr_SetString(PyExc_TypeError, "resolve must be callable");
        return -1;
    }
    Py_XSETREF(self->prefixes, Py_NewRef(prefixes));
    Py_XSETREF(self->lengths, Py_NewRef(lengths));
    Py_XSETREF(self->resolve, Py_NewRef(resolve));
    Py_XSETREF(self->routes, PyDict_New());
    if (self->routes == NULL)
        return -1;
    free_outputs(self);
    self->unrouted = 0;
    return 0;
}

static PyObject *
Fanout_set_routes(Fanout *self, PyObject *args)
{
    PyObject *routes;
    Py_ssize_t outputs;
    if (!PyArg_ParseTuple(args, "On:set_routes", &routes, &outputs))
        return NULL;
    if (outputs < 0) {
        PyErr_SetString(PyExc_ValueError, "outputs must not be negative");
        return NULL;
    }
    /* Checked once here so that feed can index the outputs without checking: str -> tuple of ints in range. */
    PyObject *copy = PyDict_New();
    if (copy == NULL)
        return NULL;
    PyObject *items = PyMapping_Items(routes);
    if (items == NULL)
        goto fail;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(items); k++) {
        PyObject *pair = PyList_GET_ITEM(items, k);
        PyObject *contract = PyTuple_GET_ITEM(pair, 0);
        PyObject *targets = PySequence_Tuple(PyTuple_GET_ITEM(pair, 1));
        if (targets == NULL)
            goto fail_items;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(targets); j++) {
            Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(targets, j));
            if (i == -1 && PyErr_Occurred()) {
                Py_DECREF(targets);
                goto fail_items;
            }
            if (i < 0 || i >= outputs) {
                PyErr_Format(PyExc_ValueError, "output %zd out of range (outputs: %zd)", i, outputs);
                Py_DECREF(targets);
                goto fail_items;
            }
        }
        int r = PyDict_SetItem(copy, contract, targets);
        Py_DECREF(targets);
        if (r < 0)
            goto fail_items;
    }
    Py_DECREF(items);
    Output *fresh = outputs ? PyMem_Calloc((size_t)outputs, sizeof(Output)) : NULL;
    if (outputs && fresh == NULL) {
        Py_DECREF(copy);
        return PyErr_NoMemory();
    }
    free_outputs(self);
    self->outputs = fresh;
    self->n_outputs = outputs;
    Py_XSETREF(self->routes, copy);
    Py_RETURN_NONE;
fail_items:
    Py_DECREF(items);
fail:
    Py_DECREF(copy);
    return NULL;
}

static int
append_frame(Output *out, const unsigned char *payload, Py_ssize_t n)
{
    unsigned char head[10];
    int h;
    head[0] = 0x81; /* FIN, text */
    if (n < 126) {
        head[1] = (unsigned char)n;
        h = 2;
    } else if (n < 65536) {
        head[1] = 126;
        head[2] = (unsigned char)(n >> 8);
        head[3] = (unsigned char)n;
        h = 4;
    } else {
        head[1] = 127;
        for (int i = 0; i < 8; i++)
            head[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        h = 10;
    }
    if (buffer_reserve(&out->frames, h + n) < 0)
        return -1;
    memcpy(out->frames.data + out->frames.len, head, (size_t)h);
    memcpy(out->frames.data + out->frames.len + h, payload, (size_t)n);
    out->frames.len += h + n;
    out->messages++;
    return 0;
}

/* The contract of a text payload, as Router.contract names it: a new reference to a str, or to None. `*made` is
 * the payload as bytes if one had to be made for the router (the caller may reuse it). */
static PyObject *
contract_of(Fanout *self, const unsigned char *p, Py_ssize_t n, PyObject **made)
{
    Py_ssize_t count = PyList_GET_SIZE(self->lengths);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len = PyLong_AsSsize_t(PyList_GET_ITEM(self->lengths, i));
        if (len == -1 && PyErr_Occurred())
            return NULL;
        if (len < 0)
            len = 0;
        PyObject *key = PyBytes_FromStringAndSize((const char *)p, len < n ? len : n); /* payload[:len] */
        if (key == NULL)
            return NULL;
        PyObject *found = PyDict_GetItemWithError(self->prefixes, key);
        Py_DECREF(key);
        if (found != NULL)
            return Py_NewRef(found);
        if (PyErr_Occurred())
            return NULL;
    }
    if (*made == NULL) {
        *made = PyBytes_FromStringAndSize((const char *)p, n);
        if (*made == NULL)
            return NULL;
    }
    return PyObject_CallOneArg(self->resolve, *made);
}

/* One record: route and frame it, and with `keep` add its row to rows and its contract to contracts. */
static int
take_record(Fanout *self, const unsigned char *head, const unsigned char *payload, int route, PyObject *rows,
            PyObject *contracts)
{
    Py_ssize_t n = (Py_ssize_t)get_le(head, 4);
    int kind = head[22];
    PyObject *bytes = NULL;
    PyObject *contract = NULL;
    int rc = -1;
    if (kind == KIND_TEXT && route) {
        contract = contract_of(self, payload, n, &bytes);
        if (contract == NULL)
            goto done;
        if (contract == Py_None) {
            self->unrouted++;
        } else {
            PyObject *targets = PyDict_GetItemWithError(self->routes, contract);
            if (targets == NULL && PyErr_Occurred())
                goto done;
            if (targets != NULL) {
                for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(targets); j++) {
                    Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(targets, j)); /* range checked by set_routes */
                    if (append_frame(&self->outputs[i], payload, n) < 0)
                        goto done;
                }
            }
        }
    }
    if (rows != NULL) {
        if (bytes == NULL && (bytes = PyBytes_FromStringAndSize((const char *)payload, n)) == NULL)
            goto done;
        PyObject *row = Py_BuildValue("(LHiO)", (long long)get_le(head + 12, 8), (unsigned short)get_le(head + 20, 2),
                                      kind, bytes);
        if (row == NULL)
            goto done;
        int r = PyList_Append(rows, row);
        Py_DECREF(row);
        if (r < 0 || PyList_Append(contracts, contract != NULL ? contract : Py_None) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(bytes);
    Py_XDECREF(contract);
    return rc;
}

typedef struct {
    Py_ssize_t count;
    uint64_t first;
    uint64_t last;
} Seen;

/* Parses whole records of data[0:end] from *pos; stops at a partial one, leaving *pos at its start and *need at
 * the bytes it needs. Returns -1 with an exception set on a bad stream or a failed route. */
static int
parse(Fanout *self, Link *link, const unsigned char *data, Py_ssize_t end, Py_ssize_t *pos, Py_ssize_t *need,
      int route, PyObject *rows, PyObject *contracts, Seen *seen)
{
    Py_ssize_t at = *pos;
    if (link->shard == Py_None) {
        if (end - at < HELLO_SIZE) {
            *need = HELLO_SIZE;
            return 0;
        }
        if (memcmp(data + at, "IMEL", 4) != 0) {
            PyErr_SetString(WireError, "not a recorder worker stream");
            return -1;
        }
        PyObject *shard = PyLong_FromUnsignedLongLong(get_le(data + at + 4, 2));
        PyObject *pid = PyLong_FromUnsignedLongLong(get_le(data + at + 6, 4));
        if (shard == NULL || pid == NULL) {
            Py_XDECREF(shard);
            Py_XDECREF(pid);
            return -1;
        }
        Py_SETREF(link->shard, shard);
        Py_SETREF(link->pid, pid);
        at += HELLO_SIZE;
    }
    while (end - at >= RECORD_SIZE) {
        uint64_t length = get_le(data + at, 4);
        if (length > MAX_PAYLOAD) {
            PyErr_Format(WireError, "record of %llu bytes", (unsigned long long)length);
            return -1;
        }
        if ((uint64_t)(end - at - RECORD_SIZE) < length) {
            *pos = at;
            *need = RECORD_SIZE + (Py_ssize_t)length;
            return 0;
        }
        uint64_t seq = get_le(data + at + 4, 8);
        if (take_record(self, data + at, data + at + RECORD_SIZE, route, rows, contracts) < 0)
            return -1;
        if (seen->count++ == 0)
            seen->first = seq;
        seen->last = seq;
        at += RECORD_SIZE + (Py_ssize_t)length;
    }
    *pos = at;
    *need = RECORD_SIZE;
    return 0;
}

/* feed(link, data, keep=False) -> (count, first_seq, last_seq, rows | None, contracts | None) | None */
static PyObject *
Fanout_feed(Fanout *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"link", "data", "keep", NULL};
    Link *link;
    Py_buffer view;
    int keep = 0;
    if (self->routes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Fanout.__init__ was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!y*|p:feed", kwlist, &LinkType, &link, &view, &keep))
        return NULL;
    PyObject *rows = NULL, *contracts = NULL, *result = NULL;
    /* What the outputs held before: a bad stream puts nothing of this chunk into them, as in the reference. */
    Py_ssize_t *before = self->n_outputs ? PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)self->n_outputs) : NULL;
    if (self->n_outputs && before == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < self->n_outputs; i++) {
        before[2 * i] = self->outputs[i].frames.len;
        before[2 * i + 1] = self->outputs[i].messages;
    }
    long long unrouted = self->unrouted;
    if (keep && ((rows = PyList_New(0)) == NULL || (contracts = PyList_New(0)) == NULL))
        goto fail;
    int route = keep || PyDict_GET_SIZE(self->routes) > 0;
    Seen seen = {0, 0, 0};
    Py_ssize_t pos = 0, need = 0;
    const unsigned char *data = view.buf;
    Py_ssize_t end = view.len;
    if (link->keep.len) {
        if (buffer_append(&link->keep, view.buf, view.len) < 0)
            goto fail;
        if (link->keep.len < link->need) {
            PyBuffer_Release(&view);
            PyMem_Free(before);
            Py_XDECREF(rows);
            Py_XDECREF(contracts);
            Py_RETURN_NONE;
        }
        /* Parse from the kept bytes; what is left of them moves to the front afterwards. */
        Buffer kept = link->keep;
        link->keep = (Buffer){NULL, 0, 0};
        int r = parse(self, link, (const unsigned char *)kept.data, kept.len, &pos, &need, route, rows, contracts,
                      &seen);
        if (r == 0 && pos < kept.len) {
            memmove(kept.data, kept.data + pos, (size_t)(kept.len - pos));
            kept.len -= pos;
            link->keep = kept;
            link->need = need;
        } else {
            buffer_free(&kept);
        }
        if (r < 0)
            goto fail;
    } else {
        if (parse(self, link, data, end, &pos, &need, route, rows, contracts, &seen) < 0)
            goto fail;
        if (pos < end) {
            if (buffer_append(&link->keep, data + pos, end - pos) < 0)
                goto fail;
            link->need = need;
        }
    }
    if (seen.count == 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(nKKOO)", seen.count, (unsigned long long)seen.first, (unsigned long long)seen.last,
                               keep ? rows : Py_None, keep ? contracts : Py_None);
    }
    PyBuffer_Release(&view);
    PyMem_Free(before);
    Py_XDECREF(rows);
    Py_XDECREF(contracts);
    return result;
fail:
    for (Py_ssize_t i = 0; i < self->n_outputs; i++) {
        self->outputs[i].frames.len = before[2 * i];
        self->outputs[i].messages = before[2 * i + 1];
    }
    self->unrouted = unrouted;
    PyBuffer_Release(&view);
    PyMem_Free(before);
    Py_XDECREF(rows);
    Py_XDECREF(contracts);
    return NULL;
}

/* take() -> [(output index, framed bytes, messages)] for each output that got something since the last take */
static PyObject *
Fanout_take(Fanout *self, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_outputs; i++) {
        Output *o = &self->outputs[i];
        if (o->messages == 0)
            continue;
        PyObject *entry = Py_BuildValue("(ny#n)", i, o->frames.data, o->frames.len, o->messages);
        if (entry == NULL || PyList_Append(out, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(entry);
        o->frames.len = 0;
        o->messages = 0;
        if (o->frames.cap > BIG_BUFFER)
            buffer_free(&o->frames); /* a burst's buffer is not kept for the quiet that follows */
    }
    return out;
}

static PyMethodDef Fanout_methods[] = {
    {"set_routes", (PyCFunction)Fanout_set_routes, METH_VARARGS,
     "set_routes(routes, outputs): which outputs want each contract; what the outputs held is dropped."},
    {"feed", (PyCFunction)(void (*)(void))Fanout_feed, METH_VARARGS | METH_KEYWORDS,
     "feed(link, data, keep=False): route and frame the whole records of a worker's stream."},
    {"take", (PyCFunction)Fanout_take, METH_NOARGS, "take(): each output's frames since the last take."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Fanout_members[] = {
    {"unrouted", T_LONGLONG, offsetof(Fanout, unrouted), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.live._fanout.Fanout",
    .tp_doc = "The hub's data path (see recorder/live/fanout.py).",
    .tp_basicsize = sizeof(Fanout),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Fanout_init,
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_traverse = (traverseproc)Fanout_traverse,
    .tp_clear = (inquiry)Fanout_clear,
    .tp_methods = Fanout_methods,
    .tp_members = Fanout_members,
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT, "_fanout", "The live hub's data path in C.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    PyObject *wire = PyImport_ImportModule("recorder.live.wire");
    if (wire == NULL)
        return NULL;
    WireError = PyObject_GetAttrString(wire, "WireError");
    Py_DECREF(wire);
    if (WireError == NULL)
        return NULL;
    if (PyType_Ready(&LinkType) < 0 || PyType_Ready(&FanoutType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fanout_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Link", (PyObject *)&LinkType) < 0 ||
        PyModule_AddObjectRef(m, "Fanout", (PyObject *)&FanoutType) < 0 ||
        PyModule_AddIntConstant(m, "KIND_TEXT", KIND_TEXT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
