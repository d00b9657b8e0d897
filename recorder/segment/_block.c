/* recorder.segment._block: splitting a data block into records in C (format.py's _split_block is the reference).

split(block, expected_records, conns, defer) -> list of (ts_ns, conn, kind, payload) tuples, or None.

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

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(block, expected_records, conns, defer): the block's (ts_ns, conn, kind, payload) records, or None."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_block", .m_doc = "Splitting data blocks into records in C.", .m_size = -1,
    .m_methods = methods};

PyMODINIT_FUNC PyInit__block(void) { return PyModule_Create(&module); }
