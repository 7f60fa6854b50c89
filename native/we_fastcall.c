/* wasm_engine.native._fastcall: the request/response latency path as one
 * CPython vectorcall.
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
 * Private: shm_protocol.Channel is the only caller. `ctx_address` must be the
 * address of a live we_exchange_ctx whose rings stay mapped for the call;
 * Channel guarantees both (it zeroes its copy of the address before it
 * unmaps). The context is not thread-safe, like the SPSC rings under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "we_native.h"

/* exchange(ctx_address: int, payload: bytes-like) -> bytes | int
 * Returns the reply's payload as bytes, or the negative status of
 * we_exchange() as an int (the caller maps it to an exception). */
static PyObject *fc_exchange(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "exchange(ctx_address, payload) takes 2 arguments");
        return NULL;
    }
    we_exchange_ctx *c = (we_exchange_ctx *)PyLong_AsVoidPtr(args[0]);
    if (c == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "exchange: null context");
        return NULL;
    }
    Py_buffer view;
    int have_view = 0;
    const char *data;
    Py_ssize_t len;
    if (PyBytes_CheckExact(args[1])) {
        data = PyBytes_AS_STRING(args[1]);
        len = PyBytes_GET_SIZE(args[1]);
    } else {
        if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
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
    if (n < 0) return PyLong_FromLongLong(n);
    return PyBytes_FromStringAndSize((const char *)c->rep_payload, (Py_ssize_t)n);
}

static PyMethodDef fc_methods[] = {
    {"exchange", (PyCFunction)(void (*)(void))fc_exchange, METH_FASTCALL,
     "exchange(ctx_address, payload) -> bytes | int: one request/response on a "
     "we_exchange_ctx; an int is a negative native status."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fc_module = {
    PyModuleDef_HEAD_INIT, "wasm_engine.native._fastcall",
    "Latency path of shm_protocol.Channel (private).", -1, fc_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcall(void) { return PyModule_Create(&fc_module); }
