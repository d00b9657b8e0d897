/* The worker's live output, its per-message path in C (recorder/live/output.py: LiveOutput).
 *
 * The worker calls the live output once for every first arrival, on its receive thread: in Python that call
 * cost ~0.48 µs (header pack, two bytearray appends, the burst bookkeeping), a sixth of recording the message.
 * Here it is one call that appends the 23-byte header and the payload to the buffer and does the same
 * bookkeeping; everything that happens at most once per event-loop turn (sending, scheduling the end-of-turn
 * send, connecting) stays in Python and is called from here by name: `_send_now()` and `_schedule()`.
 * `PyLiveOutput.__call__` is the reference; tests/test_live_units.py checks that both make the same sends of
 * the same bytes for the same calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <string.h>

#define HEADER_SIZE 23 /* struct "<IQqHB": payload length, sequence, receive ts_ns, conn, record kind */

typedef struct {
    PyObject_HEAD
    PyObject *buf; /* a bytearray: what waits for the hub */
    long long seq;
    long long dropped;
    Py_ssize_t send_at;
    Py_ssize_t max;
    long long burst_deadline;
    long long last_flush_ns;
    long long pause_ns;
    long long burst_ns;
    long long burst_step; /* the wait before the next send within this burst: burst_ns, doubling up to burst_max_ns */
    long long burst_max_ns;
    long max_kind;
    char scheduled;
} OutputBase;

static PyObject *str_send_now;
static PyObject *str_schedule;

static PyObject *
OutputBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    OutputBase *self = (OutputBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->buf = PyByteArray_FromStringAndSize(NULL, 0);
    if (self->buf == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
OutputBase_dealloc(OutputBase *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyType_IS_GC(tp))
        PyObject_GC_UnTrack(self);
    Py_CLEAR(self->buf);
    tp->tp_free((PyObject *)self);
}

static int
call_method(OutputBase *self, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static inline void
put_le(unsigned char *p, unsigned long long v, int n)
{
    for (int i = 0; i < n; i++) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
}

/* Python's ints do not overflow; these give the same answers within int64 (a deadline past its end never
 * comes, as with Python's larger int). Only absurd timestamps get near the limits; time_ns() never does. */
static inline long long
add_saturating(long long a, long long b)
{
    long long r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? LLONG_MAX : LLONG_MIN;
    return r;
}

/* a - b > gap, as Python computes it: when a - b overflows, a and b have opposite signs and a's sign says. */
static inline int
later_than(long long a, long long b, long long gap)
{
    long long d;
    if (__builtin_sub_overflow(a, b, &d))
        return a > 0;
    return d > gap;
}

/* output(ts_ns, conn, kind, payload) */
static PyObject *
OutputBase_call(OutputBase *self, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "the live output takes positional arguments only");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 4) {
        PyErr_SetString(PyExc_TypeError, "the live output takes (ts_ns, conn, kind, payload)");
        return NULL;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(args, 2));
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (kind > self->max_kind)
        Py_RETURN_NONE;
    long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(args, 0));
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    long conn = PyLong_AsLong(PyTuple_GET_ITEM(args, 1));
    if (conn == -1 && PyErr_Occurred())
        return NULL;
    if (conn < 0 || conn > 0xFFFF || kind < 0) {
        PyErr_SetString(PyExc_OverflowError, "live record: conn or kind out of range");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, 3), &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((unsigned long long)view.len > 0xFFFFFFFFULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "live record: payload over 4 GiB");
        return NULL;
    }
    long long seq = self->seq;
    self->seq = seq + 1;
    Py_ssize_t n = PyByteArray_GET_SIZE(self->buf);
    if (n > self->send_at) {
        if (n > self->max) {
            self->dropped++;
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        if (call_method(self, str_send_now) < 0)
            goto fail;
        n = PyByteArray_GET_SIZE(self->buf);
    }
    if (PyByteArray_Resize(self->buf, n + HEADER_SIZE + view.len) < 0)
        goto fail;
    unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(self->buf) + n;
    put_le(p, (unsigned long long)view.len, 4);
    put_le(p + 4, (unsigned long long)seq, 8);
    put_le(p + 12, (unsigned long long)ts, 8);
    put_le(p + 20, (unsigned long long)conn, 2);
    p[22] = (unsigned char)kind;
    memcpy(p + HEADER_SIZE, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (self->scheduled) { /* not the first of this loop turn: it goes with the rest of the turn's frames */
        if (self->burst_deadline && ts > self->burst_deadline) {
            long long step = self->burst_step > self->burst_max_ns / 2 ? self->burst_max_ns : self->burst_step * 2;
            self->burst_step = step;
            self->burst_deadline = add_saturating(ts, step);
            if (call_method(self, str_send_now) < 0)
                return NULL;
        }
        Py_RETURN_NONE;
    }
    self->scheduled = 1;
    if (call_method(self, str_schedule) < 0)
        return NULL;
    if (later_than(ts, self->last_flush_ns, self->pause_ns)) {
        self->burst_step = self->burst_ns;
        self->burst_deadline = add_saturating(ts, self->burst_ns);
        if (call_method(self, str_send_now) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMemberDef OutputBase_members[] = {
    {"_buf", T_OBJECT_EX, offsetof(OutputBase, buf), READONLY, NULL},
    {"_seq", T_LONGLONG, offsetof(OutputBase, seq), 0, NULL},
    {"dropped", T_LONGLONG, offsetof(OutputBase, dropped), 0, NULL},
    {"_send_at", T_PYSSIZET, offsetof(OutputBase, send_at), 0, NULL},
    {"_max", T_PYSSIZET, offsetof(OutputBase, max), 0, NULL},
    {"_burst_deadline", T_LONGLONG, offsetof(OutputBase, burst_deadline), 0, NULL},
    {"_last_flush_ns", T_LONGLONG, offsetof(OutputBase, last_flush_ns), 0, NULL},
    {"_pause_ns", T_LONGLONG, offsetof(OutputBase, pause_ns), 0, NULL},
    {"_burst_ns", T_LONGLONG, offsetof(OutputBase, burst_ns), 0, NULL},
    {"_burst_step", T_LONGLONG, offsetof(OutputBase, burst_step), 0, NULL},
    {"_burst_max_ns", T_LONGLONG, offsetof(OutputBase, burst_max_ns), 0, NULL},
    {"_max_kind", T_LONG, offsetof(OutputBase, max_kind), 0, NULL},
    {"_scheduled", T_BOOL, offsetof(OutputBase, scheduled), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject OutputBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.record._handover.OutputBase",
    .tp_doc = "The live output's per-message path (see recorder/live/output.py).",
    .tp_basicsize = sizeof(OutputBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = OutputBase_new,
    .tp_dealloc = (destructor)OutputBase_dealloc,
    .tp_call = (ternaryfunc)OutputBase_call,
    .tp_members = OutputBase_members,
};

static struct PyModuleDef handover_module = {
    PyModuleDef_HEAD_INIT, "_handover", "The worker's live output, per message, in C.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__handover(void)
{
    str_send_now = PyUnicode_InternFromString("_send_now");
    str_schedule = PyUnicode_InternFromString("_schedule");
    if (str_send_now == NULL || str_schedule == NULL)
        return NULL;
    if (PyType_Ready(&OutputBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&handover_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&OutputBaseType);
    if (PyModule_AddObject(m, "OutputBase", (PyObject *)&OutputBaseType) < 0) {
        Py_DECREF(&OutputBaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
