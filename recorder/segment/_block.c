/* recorder.segment._block: a data block's records in C — split (format.py's _split_block is the reference) and
the record headers packed (format.py's pack_headers falls back to struct for anything this refuses).

split(block, expected_records, conns, defer) -> list of (ts_ns, conn, kind, payload) tuples, or None.
first_descent(rows, start) -> where rows stop being sorted by time (ordered.py, the merge of sorted streams).

None means "let Python do it": for any inconsistency (format.py then raises the precise SegmentFormatError) and
for a block holding a record whose kind is flagged in `defer` (256 bytes, one per kind: the receipt blocks, which
format.py expands). So this only has to be right about what it accepts, never about why it refuses.

`conns` (a mapping or None): each record's connection id is replaced by conns[conn]; `ime-segments merge` gives
its output ids this way instead of rebuilding every tuple. A dict subclass's __missing__ is honoured.
The layout (docs/FORMAT.md): u32 count; count headers of <qIBI (ts_ns, conn, kind, payload length); payloads.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_BYTES 17  /* struct "<qIBI" */

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline int64_t le64(const unsigned char *p) {
    return (int64_t)((uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32);
}

static PyObject *mapped_conn(PyObject *conns, PyObject *conn) {
    if (PyDict_CheckExact(conns)) {
        PyObject *found = PyDict_GetItemWithError(conns, conn);
        if (found) { Py_INCREF(found); return found; }
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_GetItem(conns, conn);  /* a dict subclass's __missing__, or any mapping */
}

static PyObject *split(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "split(block, expected_records, conns, defer) takes 4 arguments");
        return NULL;
    }
    PyObject *block = args[0], *conns = args[2] == Py_None ? NULL : args[2], *defer = args[3];
    if (!PyBytes_Check(block) || !PyBytes_Check(defer) || PyBytes_GET_SIZE(defer) != 256) {
        PyErr_SetString(PyExc_TypeError, "split takes the block as bytes and defer as 256 bytes");
        return NULL;
    }
    long long expected = PyLong_AsLongLong(args[1]);
    if (expected == -1 && PyErr_Occurred()) return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(block);
    const unsigned char *deferred = (const unsigned char *)PyBytes_AS_STRING(defer);
    Py_ssize_t size = PyBytes_GET_SIZE(block);
    if (size < 4) Py_RETURN_NONE;
    uint32_t count = le32(p);
    if ((long long)count != expected) Py_RETURN_NONE;
    uint64_t base = 4 + (uint64_t)HEADER_BYTES * count;
    if (base > (uint64_t)size) Py_RETURN_NONE;
    /* The whole layout first: nothing is built for a block that Python will read anyway. */
    uint64_t pos = base;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *h = p + 4 + (uint64_t)HEADER_BYTES * i;
        if (deferred[h[12]]) Py_RETURN_NONE;
        pos += le32(h + 13);
    }
    if (pos != (uint64_t)size) Py_RETURN_NONE;

    PyObject *out = PyList_New(count);
    if (!out) return NULL;
    uint32_t last_conn = 0;
    PyObject *last_conn_obj = NULL;  /* records of a block mostly share a connection: convert (and map) it once */
    pos = base;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *h = p + 4 + (uint64_t)HEADER_BYTES * i;
        uint32_t conn = le32(h + 8), length = le32(h + 13);
        if (!last_conn_obj || conn != last_conn) {
            PyObject *raw = PyLong_FromUnsignedLong(conn);
            if (!raw) goto fail;
            Py_XDECREF(last_conn_obj);
            last_conn_obj = conns ? mapped_conn(conns, raw) : (Py_INCREF(raw), raw);
            Py_DECREF(raw);
            if (!last_conn_obj) goto fail;
            last_conn = conn;
        }
        PyObject *ts = PyLong_FromLongLong(le64(h)), *kind = PyLong_FromLong(h[12]);
        PyObject *payload = PyBytes_FromStringAndSize((const char *)p + pos, length);
        PyObject *row = PyTuple_New(4);
        if (!ts || !kind || !payload || !row) {
            Py_XDECREF(ts);
            Py_XDECREF(kind);
            Py_XDECREF(payload);
            Py_XDECREF(row);
            goto fail;
        }
        Py_INCREF(last_conn_obj);
        PyTuple_SET_ITEM(row, 0, ts);
        PyTuple_SET_ITEM(row, 1, last_conn_obj);
        PyTuple_SET_ITEM(row, 2, kind);
        PyTuple_SET_ITEM(row, 3, payload);
        PyList_SET_ITEM(out, i, row);
        pos += length;
    }
    Py_XDECREF(last_conn_obj);
    return out;
fail:
    Py_XDECREF(last_conn_obj);
    Py_DECREF(out);
    return NULL;
}

static inline void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* headers(stamps, conns, kinds, lengths) -> the records' packed "<qIBI" headers, or None for anything that is not
   an int in range (struct then raises its own error). Sequences of equal length. */
static PyObject *headers(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "headers(stamps, conns, kinds, lengths) takes 4 arguments");
        return NULL;
    }
    PyObject *cols[4] = {NULL, NULL, NULL, NULL}, *out = NULL;
    Py_ssize_t n = 0;
    for (int c = 0; c < 4; c++) {
        if (!(cols[c] = PySequence_Fast(args[c], "headers takes four sequences"))) goto done;
        if (c && PySequence_Fast_GET_SIZE(cols[c]) != n) {
            PyErr_SetString(PyExc_ValueError, "headers: the four columns differ in length");
            goto done;
        }
        n = PySequence_Fast_GET_SIZE(cols[c]);
    }
    if (!(out = PyBytes_FromStringAndSize(NULL, n * HEADER_BYTES))) goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    PyObject **items[4];
    for (int c = 0; c < 4; c++) items[c] = PySequence_Fast_ITEMS(cols[c]);
    static const unsigned long long limit[4] = {0, 0xFFFFFFFFULL, 0xFFULL, 0xFFFFFFFFULL};
    for (Py_ssize_t i = 0; i < n; i++, p += HEADER_BYTES) {
        unsigned long long v[4];
        for (int c = 0; c < 4; c++) {
            PyObject *o = items[c][i];
            if (!PyLong_Check(o)) goto refuse;
            int overflow;
            long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow || (x == -1 && PyErr_Occurred())) { PyErr_Clear(); goto refuse; }
            if (c && (x < 0 || (unsigned long long)x > limit[c])) goto refuse;
            v[c] = (unsigned long long)x;
        }
        put_le32(p, (uint32_t)v[0]);
        put_le32(p + 4, (uint32_t)(v[0] >> 32));
        put_le32(p + 8, (uint32_t)v[1]);
        p[12] = (unsigned char)v[2];
        put_le32(p + 13, (uint32_t)v[3]);
    }
    goto done;
refuse:
    Py_CLEAR(out);
    out = Py_None;
    Py_INCREF(out);
done:
    for (int c = 0; c < 4; c++) Py_XDECREF(cols[c]);
    return out;
}

/* first_descent(rows, start) -> the first index i > start whose time is below the one before it (rows[i][0] <
   rows[i - 1][0]), or len(rows): where a list of rows stops being sorted by time (ordered.py's _first_descent is the
   reference). Rows are tuples whose first item is an int within int64 (a receive time); anything else: TypeError. */
static PyObject *first_descent(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "first_descent(rows, start) takes a list and an index");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), n = PyList_GET_SIZE(args[0]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    long long prev = 0;
    for (Py_ssize_t i = start < 0 ? 0 : start; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(args[0], i);
        PyObject *ts = PyTuple_Check(row) && PyTuple_GET_SIZE(row) ? PyTuple_GET_ITEM(row, 0) : NULL;
        int overflow = 0;
        long long now = ts && PyLong_CheckExact(ts) ? PyLong_AsLongLongAndOverflow(ts, &overflow) : 0;
        if (!ts || !PyLong_CheckExact(ts) || overflow) {
            PyErr_SetString(PyExc_TypeError, "first_descent: a row is not a tuple starting with an int64");
            return NULL;
        }
        if (i > start && now < prev) return PyLong_FromSsize_t(i);
        prev = now;
    }
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(block, expected_records, conns, defer): the block's (ts_ns, conn, kind, payload) records, or None."},
    {"headers", (PyCFunction)(void (*)(void))headers, METH_FASTCALL,
     "headers(stamps, conns, kinds, lengths): the records' packed headers, or None for a value out of range."},
    {"first_descent", (PyCFunction)(void (*)(void))first_descent, METH_FASTCALL,
     "first_descent(rows, start): the first index after start whose time is below the one before it, or len(rows)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_block", .m_doc = "Data blocks' records in C.", .m_size = -1,
    .m_methods = methods};

PyMODINIT_FUNC PyInit__block(void) { return PyModule_Create(&module); }
