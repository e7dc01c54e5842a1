/* pcapd._capture: a libpcap handle that writes what it reads straight into pcapng EPBs.
 *
 * One Python call reads a batch (`dispatch`), and libpcap's callback appends each packet to a
 * C buffer as a little-endian Enhanced Packet Block of interface 0: nanosecond timestamp (the
 * handle asks libpcap for nanosecond precision, so nothing has to be read out of another
 * binding's objects), captured and original length, data, padding, trailing length. No Python
 * object is made per packet; `take` hands the whole batch over as one bytes object.
 *
 * The handle is not thread-safe: pcapd uses it from one thread at a time (activated in a worker
 * thread, then read on the Trio thread), as it did cypcap's. Lengths from libpcap are trusted
 * no further than they must be: the captured length is clamped to the handle's snaplen and to
 * MAX_CAPLEN before anything is copied, and the buffer only ever grows by checked sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <string.h>

#define PCAPD_BPF_MAXINSNS 4096 /* the kernel's limit (linux/bpf_common.h BPF_MAXINSNS) */

#define EPB_TYPE 0x00000006u
#define MAX_CAPLEN 262144u

static PyObject *PcapError;

typedef struct {
    PyObject_HEAD
    pcap_t *pcap;
    int nano;               /* timestamps are nanoseconds (else microseconds) */
    unsigned char *buf;     /* pending EPBs */
    size_t len, cap;
    Py_ssize_t count;       /* packets pending */
    unsigned long long captured;
    unsigned long long first_ts, last_ts;
    int oom;                /* the callback could not grow the buffer: dispatch fails */
} Handle;

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static PyObject *raise_pcap(Handle *self, int code, const char *what) {
    const char *text = self && self->pcap ? pcap_geterr(self->pcap) : "";
    if (code != PCAP_ERROR && code != 0) {
        const char *status = pcap_statustostr(code);
        if (text == NULL || !*text) text = status;
    }
    PyObject *exc = Py_BuildValue("(iss)", code, what, text ? text : "");
    if (exc) { PyErr_SetObject(PcapError, exc); Py_DECREF(exc); }
    return NULL;
}

static int ensure_open(Handle *self) {
    if (self->pcap == NULL) {
        PyErr_SetString(PyExc_ValueError, "the capture handle is closed");
        return 0;
    }
    return 1;
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *data) {
    Handle *self = (Handle *)user;
    uint32_t caplen = h->caplen;
    if (caplen > MAX_CAPLEN) caplen = MAX_CAPLEN;
    uint32_t padded = (caplen + 3u) & ~3u;
    size_t total = 32u + (size_t)padded;
    if (self->len + total > self->cap) {
        size_t want = self->cap ? self->cap : 65536;
        while (want < self->len + total) want *= 2;
        unsigned char *grown = PyMem_RawRealloc(self->buf, want);
        if (grown == NULL) { self->oom = 1; return; }
        self->buf = grown;
        self->cap = want;
    }
    unsigned long long ts = (unsigned long long)h->ts.tv_sec * 1000000000ull
        + (unsigned long long)h->ts.tv_usec * (self->nano ? 1ull : 1000ull);
    unsigned char *p = self->buf + self->len;
    put_le32(p, EPB_TYPE);
    put_le32(p + 4, (uint32_t)total);
    put_le32(p + 8, 0);
    put_le32(p + 12, (uint32_t)(ts >> 32));
    put_le32(p + 16, (uint32_t)ts);
    put_le32(p + 20, caplen);
    put_le32(p + 24, h->len > caplen ? h->len : caplen);
    memcpy(p + 28, data, caplen);
    memset(p + 28 + caplen, 0, padded - caplen);
    put_le32(p + 28 + padded, (uint32_t)total);
    self->len += total;
    if (self->count == 0) self->first_ts = ts;
    self->last_ts = ts;
    self->count++;
    self->captured += caplen;
}

static PyObject *Handle_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    const char *device;
    if (!PyArg_ParseTuple(args, "s", &device)) return NULL;
    Handle *self = (Handle *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    char err[PCAP_ERRBUF_SIZE] = "";
    self->pcap = pcap_create(device, err);
    if (self->pcap == NULL) {
        Py_DECREF(self);
        PyObject *exc = Py_BuildValue("(iss)", PCAP_ERROR, "create", err);
        if (exc) { PyErr_SetObject(PcapError, exc); Py_DECREF(exc); }
        return NULL;
    }
    return (PyObject *)self;
}

static void Handle_dealloc(Handle *self) {
    if (self->pcap) pcap_close(self->pcap);
    PyMem_RawFree(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define SETTER(name, call)                                                              \
    static PyObject *Handle_##name(Handle *self, PyObject *arg) {                       \
        long v = PyLong_AsLong(arg);                                                    \
        if (v == -1 && PyErr_Occurred()) return NULL;                                   \
        if (!ensure_open(self)) return NULL;                                            \
        if (v < INT_MIN || v > INT_MAX) {                                               \
            PyErr_SetString(PyExc_OverflowError, #name ": out of range");               \
            return NULL;                                                                \
        }                                                                               \
        int rc = call(self->pcap, (int)v);                                              \
        if (rc != 0) return raise_pcap(self, rc, #name);                                \
        Py_RETURN_NONE;                                                                 \
    }

SETTER(set_snaplen, pcap_set_snaplen)
SETTER(set_promisc, pcap_set_promisc)
SETTER(set_timeout_ms, pcap_set_timeout)
SETTER(set_buffer_size, pcap_set_buffer_size)
SETTER(set_tstamp_precision, pcap_set_tstamp_precision)

static PyObject *Handle_activate(Handle *self, PyObject *unused) {
    if (!ensure_open(self)) return NULL;
    int rc = pcap_activate(self->pcap);
    if (rc < 0) return raise_pcap(self, rc, "activate");
    self->nano = pcap_get_tstamp_precision(self->pcap) == PCAP_TSTAMP_PRECISION_NANO;
    return PyLong_FromLong(rc); /* 0 or a warning code */
}

static PyObject *Handle_setdirection(Handle *self, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (!ensure_open(self)) return NULL;
    if (v != PCAP_D_IN && v != PCAP_D_OUT && v != PCAP_D_INOUT) {
        PyErr_SetString(PyExc_ValueError, "direction must be 0 (in and out), 1 (in) or 2 (out)");
        return NULL;
    }
    if (pcap_setdirection(self->pcap, (pcap_direction_t)v) != 0)
        return raise_pcap(self, PCAP_ERROR, "setdirection");
    Py_RETURN_NONE;
}

/* setfilter(program): install a program compiled elsewhere (pcapd.agent.bpf_worker compiles
 * users' filters in a child process with CPU and time limits: pcap_compile holds the GIL and
 * its optimiser is ~cubic in `or` terms). `program` is a buffer of struct bpf_insn in native
 * byte order (pcapd.agent.bpf.program_bytes); libpcap validates it before the kernel sees it. */
static PyObject *Handle_setfilter(Handle *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) return NULL;
    if (!ensure_open(self)) { PyBuffer_Release(&view); return NULL; }
    Py_ssize_t count = view.len / (Py_ssize_t)sizeof(struct bpf_insn);
    if (view.len <= 0 || view.len % (Py_ssize_t)sizeof(struct bpf_insn) != 0
            || count > PCAPD_BPF_MAXINSNS) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "a BPF program is 1 to 4096 instructions of 8 bytes each");
        return NULL;
    }
    struct bpf_insn *insns = PyMem_Malloc((size_t)view.len);  /* aligned, unlike the buffer */
    if (insns == NULL) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
    memcpy(insns, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    struct bpf_program program = {(u_int)count, insns};
    int rc = pcap_setfilter(self->pcap, &program);
    PyMem_Free(insns);
    if (rc != 0) return raise_pcap(self, PCAP_ERROR, "setfilter");
    Py_RETURN_NONE;
}

static PyObject *Handle_setnonblock(Handle *self, PyObject *unused) {
    if (!ensure_open(self)) return NULL;
    char err[PCAP_ERRBUF_SIZE] = "";
    if (pcap_setnonblock(self->pcap, 1, err) != 0) {
        PyObject *exc = Py_BuildValue("(iss)", PCAP_ERROR, "setnonblock", err);
        if (exc) { PyErr_SetObject(PcapError, exc); Py_DECREF(exc); }
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Handle_info(Handle *self, PyObject *unused) {
    if (!ensure_open(self)) return NULL;
    const struct timeval *t = pcap_get_required_select_timeout(self->pcap);
    PyObject *timeout = t ? PyFloat_FromDouble((double)t->tv_sec + t->tv_usec / 1e6)
                          : (Py_INCREF(Py_None), Py_None);
    if (timeout == NULL) return NULL;
    return Py_BuildValue("(iiiN)", pcap_datalink(self->pcap), pcap_snapshot(self->pcap),
                         pcap_get_selectable_fd(self->pcap), timeout);
}

/* dispatch(limit) -> ring_empty: read up to `limit` more packets already in the ring into
 * the pending batch; True when the ring was found empty. */
static PyObject *Handle_dispatch(Handle *self, PyObject *arg) {
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (!ensure_open(self)) return NULL;
    Py_ssize_t start = self->count;
    while (self->count - start < limit) {
        Py_ssize_t want = limit - (self->count - start);
        int rc = pcap_dispatch(self->pcap, want > INT_MAX ? INT_MAX : (int)want, on_packet,
                               (u_char *)self);
        if (self->oom) return PyErr_NoMemory(); /* a packet could not be kept: fail loudly */
        if (rc == PCAP_ERROR_BREAK) break;
        if (rc < 0) return raise_pcap(self, rc, "dispatch");
        if (rc == 0) Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* take() -> (blocks, count, captured_bytes, first_ts, last_ts): the pending batch. */
static PyObject *Handle_take(Handle *self, PyObject *unused) {
    PyObject *blocks = PyBytes_FromStringAndSize((const char *)self->buf, (Py_ssize_t)self->len);
    if (blocks == NULL) return NULL;
    PyObject *result;
    if (self->count)
        result = Py_BuildValue("(NnKKK)", blocks, self->count, self->captured, self->first_ts,
                               self->last_ts);
    else
        result = Py_BuildValue("(NnKOO)", blocks, (Py_ssize_t)0, 0ull, Py_None, Py_None);
    if (result == NULL) return NULL;
    self->len = 0; self->count = 0; self->captured = 0; self->oom = 0;
    if (self->cap > (16u << 20)) { /* a burst grew it: give the memory back */
        PyMem_RawFree(self->buf); self->buf = NULL; self->cap = 0;
    }
    return result;
}

static PyObject *Handle_newest(Handle *self, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(self->count ? self->last_ts : 0);
}

static PyObject *Handle_pending(Handle *self, PyObject *unused) {
    return PyLong_FromSsize_t(self->count);
}

static PyObject *Handle_stats(Handle *self, PyObject *unused) {
    if (!ensure_open(self)) return NULL;
    struct pcap_stat st;
    if (pcap_stats(self->pcap, &st) != 0) return raise_pcap(self, PCAP_ERROR, "stats");
    return Py_BuildValue("(III)", st.ps_recv, st.ps_drop, st.ps_ifdrop);
}

static PyObject *Handle_close(Handle *self, PyObject *unused) {
    if (self->pcap) { pcap_close(self->pcap); self->pcap = NULL; }
    Py_RETURN_NONE;
}

static PyObject *Handle_get_nano(Handle *self, void *closure) {
    return PyBool_FromLong(self->nano);
}

static PyMethodDef Handle_methods[] = {
    {"set_snaplen", (PyCFunction)Handle_set_snaplen, METH_O, NULL},
    {"set_promisc", (PyCFunction)Handle_set_promisc, METH_O, NULL},
    {"set_timeout_ms", (PyCFunction)Handle_set_timeout_ms, METH_O, NULL},
    {"set_buffer_size", (PyCFunction)Handle_set_buffer_size, METH_O, NULL},
    {"set_tstamp_precision", (PyCFunction)Handle_set_tstamp_precision, METH_O, NULL},
    {"activate", (PyCFunction)Handle_activate, METH_NOARGS, NULL},
    {"setdirection", (PyCFunction)Handle_setdirection, METH_O, NULL},
    {"setfilter", (PyCFunction)Handle_setfilter, METH_O, NULL},
    {"setnonblock", (PyCFunction)Handle_setnonblock, METH_NOARGS, NULL},
    {"info", (PyCFunction)Handle_info, METH_NOARGS,
     "(link type, snaplen, selectable fd, required select timeout or None)"},
    {"dispatch", (PyCFunction)Handle_dispatch, METH_O, NULL},
    {"take", (PyCFunction)Handle_take, METH_NOARGS, NULL},
    {"newest", (PyCFunction)Handle_newest, METH_NOARGS, NULL},
    {"pending", (PyCFunction)Handle_pending, METH_NOARGS, NULL},
    {"stats", (PyCFunction)Handle_stats, METH_NOARGS, NULL},
    {"close", (PyCFunction)Handle_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Handle_getset[] = {
    {"nanoseconds", (getter)Handle_get_nano, NULL, "timestamps have nanosecond precision", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pcapd._capture.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_dealloc = (destructor)Handle_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A libpcap handle whose dispatch writes pcapng EPBs into one buffer.",
    .tp_methods = Handle_methods,
    .tp_getset = Handle_getset,
    .tp_new = Handle_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_capture", "libpcap straight into pcapng EPBs.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__capture(void) {
    if (PyType_Ready(&HandleType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PcapError = PyErr_NewException("pcapd._capture.PcapError", NULL, NULL);
    Py_INCREF(&HandleType);
    if (PcapError == NULL || PyModule_AddObject(m, "Handle", (PyObject *)&HandleType) < 0
        || PyModule_AddObject(m, "PcapError", PcapError) < 0
        || PyModule_AddIntConstant(m, "ERROR_NO_SUCH_DEVICE", PCAP_ERROR_NO_SUCH_DEVICE) < 0
        || PyModule_AddIntConstant(m, "ERROR_PERM_DENIED", PCAP_ERROR_PERM_DENIED) < 0
        || PyModule_AddIntConstant(m, "TSTAMP_PRECISION_NANO", PCAP_TSTAMP_PRECISION_NANO) < 0
        || PyModule_AddIntConstant(m, "TSTAMP_PRECISION_MICRO", PCAP_TSTAMP_PRECISION_MICRO) < 0
        || PyModule_AddStringConstant(m, "LIB_VERSION", pcap_lib_version()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
