/* wasm_engine.native._fastcall: the request/response latency path as one
 * CPython vectorcall (the Exchanger type).
 *
 * Why this exists beside the cffi module (and why it is the one place in
 * native/ that knows Python objects): a cffi call converts every argument,
 * releases and re-takes the GIL and boxes its result, about 0.7-0.9 us per
 * call on the 2-core reference machine, while the exchange itself (push one
 * record, wait for one, copy it) costs 0.13 us. A round trip is two such
 * calls in series, so cffi alone put the ring's RTT near 2.2-3.5 us against
 * Pipe's 25-45 us (1/10); this call takes the bytes object as is, spins with
 * the GIL held (bounded by the channel's spin_iters) and only releases the
 * GIL when it has to block in the kernel, which brings the RTT to about
 * 1/25 of Pipe's (docs/PROTOCOL.md, "Latency path").
 *
 * It adds no ring logic: every byte is moved by we_exchange() in
 * we_native.c, the same function the cffi module exposes, which stays the
 * reference path the tests cross-check this one against.
 *
 * Private: shm_protocol.Channel is the only user. `ctx_address` must be the
 * address of a live we_exchange_ctx whose rings stay mapped while the
 * Exchanger is attached; Channel guarantees both (the Exchanger holds the
 * cffi object owning the context, and Channel.close() detaches it before it
 * unmaps). The context is not thread-safe, like the SPSC rings under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#include "we_native.h"

/* One exchange on `c`: the reply's payload as bytes, or the negative
 * status of we_exchange() in *status (and NULL returned, no exception set).
 * NULL with *status == 0 means a Python exception is set. */
static PyObject *exchange_payload(we_exchange_ctx *c, PyObject *payload, int64_t *status) {
    Py_buffer view;
    int have_view = 0;
    const char *data;
    Py_ssize_t len;
    *status = 0;
    if (PyBytes_CheckExact(payload)) {
        data = PyBytes_AS_STRING(payload);
        len = PyBytes_GET_SIZE(payload);
    } else {
        if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) return NULL;
        have_view = 1;
        data = (const char *)view.buf;
        len = view.len;
    }
    if (len > (Py_ssize_t)UINT32_MAX) {
        if (have_view) PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "exchange: payload longer than 2**32-1 bytes");
        return NULL;
    }
    /* First try: spin only (timeout 0), GIL held. */
    int64_t timeout_ns = c->timeout_ns;
    c->timeout_ns = 0;
    int64_t n = we_exchange(c, data, (uint32_t)len);
    c->timeout_ns = timeout_ns;
    if (timeout_ns != 0 && n == WE_ERR_EMPTY_TIMEOUT) {
        /* Sent (or nothing to send); the reply is slow: block without the
         * GIL. send_first is cleared so the record is not sent twice. */
        uint32_t send_first = c->send_first;
        c->send_first = 0;
        Py_BEGIN_ALLOW_THREADS
        n = we_exchange(c, NULL, 0);
        Py_END_ALLOW_THREADS
        c->send_first = send_first;
    } else if (timeout_ns != 0 && n == WE_ERR_FULL_TIMEOUT) {
        /* Nothing was sent (a push is all or nothing): wait for room. */
        Py_BEGIN_ALLOW_THREADS
        n = we_exchange(c, data, (uint32_t)len);
        Py_END_ALLOW_THREADS
    }
    if (have_view) PyBuffer_Release(&view);
    if (n < 0) {
        *status = n;
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)c->rep_payload, (Py_ssize_t)n);
}

/* ---- Exchanger: exchange() bound to one context, as a callable ----------
 *
 * Exchanger(ctx_address, owner, on_status, to_timeout_ns, timeout_s)
 *   owner          kept alive as long as the exchanger (the cffi object that
 *                  owns the context's memory)
 *   on_status      on_status(status, timeout_s) for a negative status, or
 *                  status 0 once closed; its result is returned (or it raises)
 *   to_timeout_ns  to_timeout_ns(timeout_s) -> int ns, called only when a
 *                  call's timeout_s differs from the previous one
 * __call__(payload, *, timeout_s=<default>) -> bytes | on_status(...)
 * close()        detaches from the context: later calls get on_status(0, ...)
 *
 * It is Channel.call_bytes: a C callable saves the Python method frame and
 * keyword handling (about a third of a call's cost on the latency path).
 */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    we_exchange_ctx *ctx;
    PyObject *owner;
    PyObject *on_status;
    PyObject *to_timeout_ns;
    PyObject *default_timeout; /* timeout_s when the call names none */
    PyObject *timeout;         /* timeout_s that ctx->timeout_ns holds */
} Exchanger;

static PyObject *str_timeout_s;

static int set_timeout(Exchanger *x, PyObject *timeout_s) {
    if (timeout_s == x->timeout) return 0;
    int same = PyObject_RichCompareBool(timeout_s, x->timeout, Py_EQ);
    if (same < 0) PyErr_Clear();
    if (same > 0 && Py_TYPE(timeout_s) == Py_TYPE(x->timeout)) return 0;
    PyObject *ns = PyObject_CallOneArg(x->to_timeout_ns, timeout_s);
    if (ns == NULL) return -1;
    long long v = PyLong_AsLongLong(ns);
    Py_DECREF(ns);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (x->ctx != NULL) x->ctx->timeout_ns = v;
    Py_INCREF(timeout_s);
    Py_SETREF(x->timeout, timeout_s);
    return 0;
}

static PyObject *exchanger_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Exchanger *x = (Exchanger *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout_s = x->default_timeout;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "call_bytes(payload, *, timeout_s=...) takes one positional argument");
        return NULL;
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        if (PyTuple_GET_SIZE(kwnames) != 1 ||
            PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), str_timeout_s) != 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "call_bytes() accepts only the keyword argument timeout_s");
            return NULL;
        }
        timeout_s = args[1];
    }
    if (x->ctx == NULL) return PyObject_CallFunction(x->on_status, "iO", 0, timeout_s);
    if (set_timeout(x, timeout_s) < 0) return NULL;
    int64_t status;
    PyObject *r = exchange_payload(x->ctx, args[0], &status);
    if (r == NULL && status < 0) return PyObject_CallFunction(x->on_status, "LO", (long long)status, timeout_s);
    return r;
}

static PyObject *exchanger_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *addr, *owner, *on_status, *to_ns, *timeout_s;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Exchanger() takes positional arguments only");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Exchanger", 5, 5, &addr, &owner, &on_status, &to_ns, &timeout_s)) return NULL;
    if (!PyCallable_Check(on_status) || !PyCallable_Check(to_ns)) {
        PyErr_SetString(PyExc_TypeError, "Exchanger: on_status and to_timeout_ns must be callable");
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "Exchanger: null context");
        return NULL;
    }
    Exchanger *x = (Exchanger *)type->tp_alloc(type, 0);
    if (x == NULL) return NULL;
    x->vectorcall = exchanger_vectorcall;
    x->ctx = (we_exchange_ctx *)p;
    x->owner = Py_NewRef(owner);
    x->on_status = Py_NewRef(on_status);
    x->to_timeout_ns = Py_NewRef(to_ns);
    x->default_timeout = Py_NewRef(timeout_s);
    x->timeout = Py_NewRef(Py_None);
    /* The context starts at the default timeout. */
    if (set_timeout(x, timeout_s) < 0) {
        Py_DECREF(x);
        return NULL;
    }
    return (PyObject *)x;
}

static int exchanger_traverse(Exchanger *x, visitproc visit, void *arg) {
    Py_VISIT(x->owner);
    Py_VISIT(x->on_status);
    Py_VISIT(x->to_timeout_ns);
    Py_VISIT(x->default_timeout);
    Py_VISIT(x->timeout);
    return 0;
}

static int exchanger_clear(Exchanger *x) {
    x->ctx = NULL;
    Py_CLEAR(x->owner);
    Py_CLEAR(x->on_status);
    Py_CLEAR(x->to_timeout_ns);
    Py_CLEAR(x->default_timeout);
    Py_CLEAR(x->timeout);
    return 0;
}

static void exchanger_dealloc(Exchanger *x) {
    PyObject_GC_UnTrack(x);
    exchanger_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static PyObject *exchanger_close(PyObject *self, PyObject *unused) {
    (void)unused;
    Exchanger *x = (Exchanger *)self;
    x->ctx = NULL;
    Py_CLEAR(x->owner);
    Py_RETURN_NONE;
}

static PyMethodDef exchanger_methods[] = {
    {"close", exchanger_close, METH_NOARGS, "Detach from the context; later calls report status 0 (closed)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ExchangerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wasm_engine.native._fastcall.Exchanger",
    .tp_basicsize = sizeof(Exchanger),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "exchange() bound to one we_exchange_ctx, callable as call_bytes(payload, *, timeout_s=...)",
    .tp_new = exchanger_new,
    .tp_dealloc = (destructor)exchanger_dealloc,
    .tp_traverse = (traverseproc)exchanger_traverse,
    .tp_clear = (inquiry)exchanger_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Exchanger, vectorcall),
    .tp_methods = exchanger_methods,
};

static struct PyModuleDef fc_module = {
    PyModuleDef_HEAD_INIT, "wasm_engine.native._fastcall",
    "Latency path of shm_protocol.Channel (private).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcall(void) {
    str_timeout_s = PyUnicode_InternFromString("timeout_s");
    if (str_timeout_s == NULL) return NULL;
    if (PyType_Ready(&ExchangerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fc_module);
    if (m == NULL) return NULL;
    Py_INCREF(&ExchangerType);
    if (PyModule_AddObject(m, "Exchanger", (PyObject *)&ExchangerType) < 0) {
        Py_DECREF(&ExchangerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
