/* pcapd._pcapngwalk: the pcapng walker's hot loops in C (the pure-Python twin is
 * pcapd/pcapng/packets.py; tests/pcapng/test_packets_walk_differential.py feeds both the same bytes),
 * and FileMerge, pcapd merge's engine (twin: pcapd.merge.engine.PureFileMerge;
 * tests/merge/test_engine_differential.py merges the same files with both).
 *
 * Attack surface: every byte comes from a file or a peer. Every read is bounds-checked against
 * the buffer's length before it happens (blocks are read only once `pos + total <= size` holds,
 * with `total >= 32`), arithmetic on lengths is done in 64 bits so that no sum can wrap, and
 * the buffer is held through the buffer protocol for the whole call (no Python code runs in
 * between that could resize it). Fuzzed under ASan/UBSan: dev/fuzz_walk.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

#define EPB_TYPE 0x00000006u

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* Whether the whole block at p (of `total` bytes, total >= 32, all inside the buffer) is a
 * valid EPB of an interface below `interfaces`. */
static inline int epb_ok(const unsigned char *p, uint64_t total, uint64_t interfaces) {
    return le32(p) == EPB_TYPE
        && le32(p + total - 4) == total
        && (uint64_t)le32(p + 20) + 32 <= total
        && (uint64_t)le32(p + 8) < interfaces;
}

static PyObject *u32_list_append(PyObject *list, uint32_t value) {
    PyObject *v = PyLong_FromUnsignedLong(value);
    if (v == NULL) return NULL;
    int rc = PyList_Append(list, v);
    Py_DECREF(v);
    return rc ? NULL : list;
}

/* epb_run(buf, pos, most, max_block_size, interfaces, interface_map or None)
 *   -> (blocks, high, low, interface_ids, end, refused)
 * See pcapd.pcapng.packets.epb_run for the contract. */
static PyObject *epb_run(PyObject *self, PyObject *args) {
    PyObject *bufobj, *map = Py_None;
    Py_ssize_t pos, most;
    unsigned long long limit, interfaces;
    if (!PyArg_ParseTuple(args, "OnnKK|O", &bufobj, &pos, &most, &limit, &interfaces, &map))
        return NULL;
    int writable = PyByteArray_Check(bufobj);
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t *newids = NULL;
    Py_ssize_t nmap = 0;
    PyObject *blocks = NULL, *high = NULL, *low = NULL, *ids = NULL, *result = NULL;
    if (pos < 0 || pos & 3) {
        PyErr_SetString(PyExc_ValueError, "epb_run: pos must be a non-negative multiple of 4");
        goto done;
    }
    if (map != Py_None) {
        PyObject *seq = PySequence_Fast(map, "interface_map must be a sequence");
        if (seq == NULL) goto done;
        nmap = PySequence_Fast_GET_SIZE(seq);
        newids = PyMem_Malloc((size_t)(nmap ? nmap : 1) * sizeof(uint32_t));
        if (newids == NULL) { Py_DECREF(seq); PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < nmap; i++) {
            unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
            if (v == (unsigned long)-1 && PyErr_Occurred()) { Py_DECREF(seq); goto done; }
            if (v > 0xFFFFFFFFul) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "interface_map holds an id above 2**32-1");
                goto done;
            }
            newids[i] = (uint32_t)v;
        }
        Py_DECREF(seq);
        if ((unsigned long long)nmap < interfaces) {
            PyErr_SetString(PyExc_ValueError, "interface_map is shorter than the interfaces");
            goto done;
        }
    }
    blocks = PyList_New(0); high = PyList_New(0); low = PyList_New(0); ids = PyList_New(0);
    if (!blocks || !high || !low || !ids) goto done;
    unsigned char *base = view.buf;
    uint64_t size = (uint64_t)view.len, at = (uint64_t)pos;
    int refused = 0;
    /* First pass: how far the valid run goes (no Python objects yet, so a refusal to rewrite
     * a read-only buffer happens before anything is changed). */
    uint64_t end = at;
    Py_ssize_t n = 0;
    int rewrite = 0;
    while (n < most) {
        if (end + 8 > (size & ~(uint64_t)3)) break;           /* no length field yet */
        uint64_t total = le32(base + end + 4);
        if (total < 32 || total & 3 || total > limit) { refused = 1; break; }
        if (end + total > size) break;                      /* not all here yet */
        if (!epb_ok(base + end, total, interfaces)) { refused = 1; break; }
        if (newids && newids[le32(base + end + 8)] != le32(base + end + 8)) rewrite = 1;
        end += total;
        n++;
    }
    if (rewrite && !writable) {
        PyErr_SetString(PyExc_TypeError, "rewriting interface ids needs a bytearray");
        goto done;
    }
    for (uint64_t p = at; p < end;) {
        const unsigned char *b = base + p;
        uint64_t total = le32(b + 4);
        uint32_t iid = le32(b + 8);
        if (!u32_list_append(high, le32(b + 12)) || !u32_list_append(low, le32(b + 16))
            || !u32_list_append(ids, iid))
            goto done;
        if (rewrite) put_le32(base + p + 8, newids[iid]);
        PyObject *block = PyBytes_FromStringAndSize((const char *)b, (Py_ssize_t)total);
        if (block == NULL) goto done;
        int rc = PyList_Append(blocks, block);
        Py_DECREF(block);
        if (rc) goto done;
        p += total;
    }
    result = Py_BuildValue("(OOOOKO)", blocks, high, low, ids, (unsigned long long)end,
                           refused ? Py_True : Py_False);
done:
    Py_XDECREF(blocks); Py_XDECREF(high); Py_XDECREF(low); Py_XDECREF(ids);
    PyMem_Free(newids);
    PyBuffer_Release(&view);
    return result;
}

/* check_epbs(buf, interface_id, new_id) -> number of blocks, 0 unless `buf` is nothing but
 * whole, valid EPBs of `interface_id`; new_id >= 0 rewrites each block's id to it (only then,
 * and only once all is checked). See pcapd.pcapng.packets.check_epbs. */
static PyObject *check_epbs(PyObject *self, PyObject *args) {
    PyObject *bufobj;
    unsigned long long interface_id;
    long long new_id;
    if (!PyArg_ParseTuple(args, "OKL", &bufobj, &interface_id, &new_id)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char *base = view.buf;
    uint64_t size = (uint64_t)view.len, at = 0;
    Py_ssize_t n = 0;
    while (at < size) {
        if (at + 32 > size) { n = 0; break; }
        uint64_t total = le32(base + at + 4);
        if (total < 32 || total & 3 || at + total > size
            || !epb_ok(base + at, total, interface_id + 1)
            || le32(base + at + 8) != interface_id) { n = 0; break; }
        at += total;
        n++;
    }
    if (n && new_id >= 0 && (unsigned long long)new_id != interface_id) {
        if (!PyByteArray_Check(bufobj)) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "rewriting interface ids needs a bytearray");
            return NULL;
        }
        for (at = 0; at < size; at += le32(base + at + 4)) put_le32(base + at + 8, (uint32_t)new_id);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

/* ---------------------------------------------------------------------------------------------
 * FileMerge: the offline merge's engine (the pure twin is pcapd.merge.engine.PureFileMerge, and
 * the contract is in that module's docstring). Packets move as slices: a run of EPBs is copied
 * from the decoder's buffer into its source's arena once, with one record a packet (offset,
 * length, timestamp); a release merges the sources' records k ways and copies their bytes into
 * one output string. Timestamps are exact: nanoseconds after a base, in 128 bits (a timestamp
 * is below 2**64 ticks, a scale's multiplier at most 10**9 and an offset below 2**93 ns, so
 * every key lies within 2**96 of zero and no sum or difference here can overflow).
 *
 * No Python code runs while the state changes: arguments are converted first, and a buffer is
 * held through the buffer protocol for the whole call.
 */

typedef __int128 i128;
typedef unsigned __int128 u128;

#define NEVER (-((i128)1 << 64))     /* below every key: "nothing promised", "nothing written" */
#define HUGE_DIV ((u128)1 << 95)     /* a divisor at least this makes every quotient 0 */
#define MASK32 ((i128)0xFFFFFFFF)

typedef struct {
    uint64_t off;                    /* in the source's arena */
    uint64_t len;
    i128 real;                       /* the packet's own key */
    i128 key;                        /* the merge's key: the source's running maximum */
} Rec;

typedef struct {
    unsigned char *arena;
    size_t alen, acap;
    Rec *recs;
    size_t n, cap;                   /* records [0, n) */
    size_t head;                     /* [0, head) released */
    size_t pushed;                   /* [head, pushed) in the merge, [pushed, n) held back */
    i128 top, frontier, last;
    int has_last, live;
} Src;

typedef struct {
    PyObject_HEAD
    Src *src;
    Py_ssize_t k;
    Py_ssize_t max_buffered, tie_cap;
    Py_ssize_t buffered;             /* in the merge, not released */
    Py_ssize_t reordered;
    Py_ssize_t live;
    i128 base, top_released;
    int has_base;
    unsigned char *pend;             /* released by a push over the cap, for the next pop */
    size_t plen, pcap;
    Py_ssize_t pcount;
} FileMerge;

typedef struct { uint64_t mul; u128 div; i128 off; } Scale;

static int grow(void **p, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return 0;
    size_t want = *cap ? *cap : 64;
    while (want < need) {
        if (want > ((size_t)PY_SSIZE_T_MAX / 2) / item) { PyErr_NoMemory(); return -1; }
        want *= 2;
    }
    void *q = PyMem_Realloc(*p, want * item);
    if (q == NULL) { PyErr_NoMemory(); return -1; }
    *p = q;
    *cap = want;
    return 0;
}

/* A Python int into 128 bits (OverflowError beyond). */
static int to_i128(PyObject *o, i128 *out) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) { *out = v; return 0; }
    PyObject *shift = PyLong_FromLong(64), *mask = PyLong_FromUnsignedLongLong(~0ULL);
    PyObject *hi = shift ? PyNumber_Rshift(o, shift) : NULL;
    PyObject *lo = mask ? PyNumber_And(o, mask) : NULL;
    int rc = -1;
    if (hi && lo) {
        long long h = PyLong_AsLongLong(hi);
        unsigned long long l = PyLong_AsUnsignedLongLong(lo);
        if (!PyErr_Occurred()) {
            *out = (i128)((u128)(unsigned long long)h << 64 | l);
            rc = 0;
        }
    }
    Py_XDECREF(shift); Py_XDECREF(mask); Py_XDECREF(hi); Py_XDECREF(lo);
    return rc;
}

static PyObject *from_i128(i128 v) {
    if (v >= (i128)LLONG_MIN && v <= (i128)LLONG_MAX) return PyLong_FromLongLong((long long)v);
    PyObject *hi = PyLong_FromLongLong((long long)(v / ((i128)1 << 64) - (v % ((i128)1 << 64) < 0)));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)(u128)v);
    PyObject *shift = PyLong_FromLong(64), *high = NULL, *result = NULL;
    if (hi && lo && shift && (high = PyNumber_Lshift(hi, shift)) != NULL)
        result = PyNumber_Or(high, lo);
    Py_XDECREF(hi); Py_XDECREF(lo); Py_XDECREF(shift); Py_XDECREF(high);
    return result;
}

static i128 floor32(i128 v) { return v - (i128)((u128)v & (u128)MASK32); }

static int parse_scales(PyObject *obj, Py_ssize_t want, Scale **out) {
    PyObject *seq = PySequence_Fast(obj, "scales must be a sequence");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != want) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%zd scales for %zd interfaces", n, want);
        return -1;
    }
    Scale *scales = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Scale));
    if (scales == NULL) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *mul, *div, *off;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OOO", &mul, &div, &off)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a scale is (mul, div, off)");
            goto fail;
        }
        i128 m, o;
        if (to_i128(mul, &m) < 0 || to_i128(off, &o) < 0) goto fail;
        if (m < 1 || m > ((i128)1 << 32)) {
            PyErr_SetString(PyExc_ValueError, "a scale's multiplier must be in 1..2**32");
            goto fail;
        }
        i128 d;
        if (to_i128(div, &d) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto fail;
            PyErr_Clear();
            d = (i128)HUGE_DIV;      /* beyond 128 bits: as good as HUGE_DIV */
        }
        if (d < 1) {
            PyErr_SetString(PyExc_ValueError, "a scale's divisor must be positive");
            goto fail;
        }
        if (o <= -((i128)1 << 100) || o >= ((i128)1 << 100)) {
            PyErr_SetString(PyExc_OverflowError, "a scale's offset must be within 2**100");
            goto fail;
        }
        scales[i].mul = (uint64_t)m;
        scales[i].div = (u128)d >= HUGE_DIV ? HUGE_DIV : (u128)d;
        scales[i].off = o;
    }
    Py_DECREF(seq);
    *out = scales;
    return 0;
fail:
    Py_DECREF(seq);
    PyMem_Free(scales);
    return -1;
}

static inline i128 scaled(const Scale *s, uint64_t ticks) {
    u128 product = (u128)ticks * s->mul;   /* below 2**96 */
    if (s->div == 1) return (i128)product + s->off;
    if (s->div >= HUGE_DIV) return s->off;
    return (i128)(product / s->div) + s->off;
}

/* The first index in [lo, hi) whose merge key is above `bound`. */
static size_t upper_bound(const Rec *r, size_t lo, size_t hi, i128 bound) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r[mid].key <= bound) lo = mid + 1; else hi = mid;
    }
    return lo;
}

typedef struct { i128 key; Py_ssize_t s; size_t i, end; } Cut;

static inline int cut_less(const Cut *a, const Cut *b) {
    return a->key < b->key || (a->key == b->key && a->s < b->s);
}

static void sift_down(Cut *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < n && cut_less(&h[l], &h[m])) m = l;
        if (l + 1 < n && cut_less(&h[l + 1], &h[m])) m = l + 1;
        if (m == i) return;
        Cut t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* The cuts a release at `bound` (all pushed packets if !bounded) takes, in source order, and
 * their bytes; 0 cuts if none. `cuts` has room for k. */
static size_t plan(FileMerge *self, int bounded, i128 bound, Cut *cuts, size_t *bytes) {
    size_t c = 0;
    *bytes = 0;
    for (Py_ssize_t s = 0; s < self->k; s++) {
        Src *src = &self->src[s];
        if (src->head >= src->pushed) continue;
        size_t end = bounded ? upper_bound(src->recs, src->head, src->pushed, bound) : src->pushed;
        if (end <= src->head) continue;
        const Rec *first = &src->recs[src->head], *last = &src->recs[end - 1];
        *bytes += (size_t)(last->off + last->len - first->off);
        cuts[c].key = first->key;
        cuts[c].s = s;
        cuts[c].i = src->head;
        cuts[c].end = end;
        c++;
    }
    return c;
}

static inline void emit(FileMerge *self, const Src *src, const Rec *r, unsigned char **dst) {
    if (r->len) {                    /* (an empty block: the arena may be NULL) */
        memcpy(*dst, src->arena + r->off, (size_t)r->len);
        *dst += r->len;
    }
    if (r->real < self->top_released) self->reordered++;
    else self->top_released = r->real;
}

/* Write the cuts' packets in order at `dst` and consume them. */
static void release(FileMerge *self, Cut *cuts, size_t c, unsigned char *dst) {
    if (c == 1) {
        Src *src = &self->src[cuts[0].s];
        for (size_t i = cuts[0].i; i < cuts[0].end; i++) emit(self, src, &src->recs[i], &dst);
    } else if (c > 1) {
        for (size_t i = c / 2; i-- > 0;) sift_down(cuts, c, i);
        size_t n = c;
        while (n) {
            Cut *top = &cuts[0];
            Src *src = &self->src[top->s];
            emit(self, src, &src->recs[top->i], &dst);
            if (++top->i < top->end) {
                top->key = src->recs[top->i].key;
            } else {
                cuts[0] = cuts[--n];
            }
            sift_down(cuts, n, 0);
        }
    }
}

static Cut *new_cuts(FileMerge *self) {
    Cut *cuts = PyMem_Malloc((size_t)(self->k ? self->k : 1) * sizeof(Cut));
    if (cuts == NULL) PyErr_NoMemory();
    return cuts;
}

/* Consume the planned cuts (their ends are kept in `ends`, since release() moves `i`). */
static void consume(FileMerge *self, const Py_ssize_t *srcs, const size_t *ends, size_t c) {
    for (size_t j = 0; j < c; j++) {
        Src *src = &self->src[srcs[j]];
        self->buffered -= (Py_ssize_t)(ends[j] - src->head);
        src->head = ends[j];
    }
}

/* Release at `bound` into the pending buffer (a push over the cap). */
static int release_pending(FileMerge *self, int bounded, i128 bound) {
    Cut *cuts = new_cuts(self);
    if (cuts == NULL) return -1;
    size_t bytes, c = plan(self, bounded, bound, cuts, &bytes);
    Py_ssize_t *srcs = PyMem_Malloc((c ? c : 1) * sizeof(Py_ssize_t));
    size_t *ends = PyMem_Malloc((c ? c : 1) * sizeof(size_t));
    int rc = -1;
    if (srcs == NULL || ends == NULL) { PyErr_NoMemory(); goto done; }
    if (grow((void **)&self->pend, &self->pcap, self->plen + bytes + 1, 1) < 0) goto done;
    Py_ssize_t count = 0;
    for (size_t j = 0; j < c; j++) {
        srcs[j] = cuts[j].s; ends[j] = cuts[j].end;
        count += (Py_ssize_t)(cuts[j].end - cuts[j].i);
    }
    release(self, cuts, c, self->pend + self->plen);
    consume(self, srcs, ends, c);
    self->plen += bytes;
    self->pcount += count;
    rc = 0;
done:
    PyMem_Free(cuts); PyMem_Free(srcs); PyMem_Free(ends);
    return rc;
}

/* The release rule's bound: the lowest frontier of the live sources, or the greatest key
 * released if higher; !bounded when no source is live. */
static int bound_now(FileMerge *self, i128 *bound) {
    int any = 0;
    i128 low = 0;
    for (Py_ssize_t s = 0; s < self->k; s++) {
        Src *src = &self->src[s];
        if (src->live && (!any || src->frontier < low)) { low = src->frontier; any = 1; }
    }
    if (!any) return 0;
    *bound = low > self->top_released ? low : self->top_released;
    return 1;
}

/* The smallest key with at least `count` buffered packets at or below it. */
static i128 smallest_bound_covering(FileMerge *self, Py_ssize_t count) {
    int any = 0;
    i128 lo = 0, hi = 0;
    for (Py_ssize_t s = 0; s < self->k; s++) {
        Src *src = &self->src[s];
        if (src->head >= src->pushed) continue;
        i128 a = src->recs[src->head].key, b = src->recs[src->pushed - 1].key;
        if (!any || a < lo) lo = a;
        if (!any || b > hi) hi = b;
        any = 1;
    }
    while (lo < hi) {
        i128 mid = lo + (hi - lo) / 2;
        Py_ssize_t n = 0;
        for (Py_ssize_t s = 0; s < self->k; s++) {
            Src *src = &self->src[s];
            if (src->head < src->pushed)
                n += (Py_ssize_t)(upper_bound(src->recs, src->head, src->pushed, mid) - src->head);
        }
        if (n >= count) hi = mid; else lo = mid + 1;
    }
    return lo;
}

/* Records [src->pushed, to) go into the merge. */
static int push(FileMerge *self, Src *src, size_t to) {
    if (to <= src->pushed) return 0;
    i128 top = src->top;
    for (size_t i = src->pushed; i < to; i++) {
        Rec *r = &src->recs[i];
        if (r->real > top) top = r->real;
        r->key = top;
    }
    self->buffered += (Py_ssize_t)(to - src->pushed);
    src->pushed = to;
    src->top = top;
    if (top > src->frontier) src->frontier = top;
    if (self->buffered > self->max_buffered) {
        i128 bound;
        int bounded = bound_now(self, &bound);
        if (release_pending(self, bounded, bound) < 0) return -1;
        Py_ssize_t excess = self->buffered - self->max_buffered;
        if (excess > 0 && release_pending(self, 1, smallest_bound_covering(self, excess)) < 0)
            return -1;
    }
    return 0;
}

/* Records [n0, src->n) were added: push them but the trailing run at the last key. */
static int take(FileMerge *self, Src *src) {
    size_t n1 = src->n, start = n1 - 1;
    i128 last = src->recs[n1 - 1].real;
    src->last = last;
    src->has_last = 1;
    while (start > src->pushed && src->recs[start - 1].real == last) {
        start--;
        if ((Py_ssize_t)(n1 - start) > self->tie_cap) { start = n1; break; }
    }
    if (start == src->pushed) return 0;   /* all of it held back */
    return push(self, src, start);
}

/* Room for `bytes` more in the arena and `count` more records, dropping what was released
 * once it outweighs what is left. */
static int reserve(Src *src, size_t bytes, size_t count) {
    if (src->head && src->head * 2 >= src->n) {
        size_t shift = src->head < src->n ? (size_t)src->recs[src->head].off : src->alen;
        if (src->alen > shift) memmove(src->arena, src->arena + shift, src->alen - shift);
        src->alen -= shift;
        if (src->n > src->head)
            memmove(src->recs, src->recs + src->head, (src->n - src->head) * sizeof(Rec));
        src->n -= src->head;
        src->pushed -= src->head;
        src->head = 0;
        for (size_t i = 0; i < src->n; i++) src->recs[i].off -= shift;
    }
    if (bytes > (size_t)PY_SSIZE_T_MAX - src->alen || count > (size_t)PY_SSIZE_T_MAX - src->n) {
        PyErr_NoMemory();
        return -1;
    }
    if (grow((void **)&src->arena, &src->acap, src->alen + bytes, 1) < 0) return -1;
    return grow((void **)&src->recs, &src->cap, src->n + count, sizeof(Rec));
}

static Src *live_source(FileMerge *self, Py_ssize_t s) {
    if (s < 0 || s >= self->k) {
        PyErr_Format(PyExc_ValueError, "no source %zd", s);
        return NULL;
    }
    if (!self->src[s].live) {
        PyErr_Format(PyExc_ValueError, "source %zd has ended", s);
        return NULL;
    }
    return &self->src[s];
}

/* add_run(source, interface_map, scales, buf, pos, max_block_size, interfaces) -> (taken, end)
 * Frames the run of whole, valid little-endian EPBs from `pos` (the checks of epb_run), copies
 * it into the source with each interface id mapped, and takes it (see take). */
static PyObject *fm_add_run(FileMerge *self, PyObject *args) {
    Py_ssize_t s, pos;
    PyObject *map, *scaleobj, *bufobj;
    unsigned long long limit, interfaces;
    if (!PyArg_ParseTuple(args, "nOOOnKK", &s, &map, &scaleobj, &bufobj, &pos, &limit, &interfaces))
        return NULL;
    Src *src = live_source(self, s);
    if (src == NULL) return NULL;
    if (pos < 0 || pos & 3) {
        PyErr_SetString(PyExc_ValueError, "add_run: pos must be a non-negative multiple of 4");
        return NULL;
    }
    if (interfaces > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "add_run: at most 2**32-1 interfaces");
        return NULL;
    }
    uint32_t *newids = NULL;
    Scale *scales = NULL;
    PyObject *result = NULL;
    Py_buffer view;
    int have_view = 0;
    PyObject *seq = PySequence_Fast(map, "interface_map must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t nmap = PySequence_Fast_GET_SIZE(seq);
    if ((unsigned long long)nmap != interfaces) {
        PyErr_Format(PyExc_ValueError, "interface_map has %zd ids for %llu interfaces", nmap,
                     interfaces);
        goto done;
    }
    newids = PyMem_Malloc((size_t)(nmap ? nmap : 1) * sizeof(uint32_t));
    if (newids == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nmap; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == (unsigned long)-1 && PyErr_Occurred()) goto done;
        if (v > 0xFFFFFFFFul) {
            PyErr_SetString(PyExc_ValueError, "interface_map holds an id above 2**32-1");
            goto done;
        }
        newids[i] = (uint32_t)v;
    }
    if (parse_scales(scaleobj, nmap, &scales) < 0) goto done;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) goto done;
    have_view = 1;
    const unsigned char *base = view.buf;
    uint64_t size = (uint64_t)view.len, end = (uint64_t)pos;
    size_t n = 0;
    while (end <= size) {
        if (end + 8 > (size & ~(uint64_t)3)) break;           /* no length field yet */
        uint64_t total = le32(base + end + 4);
        if (total < 32 || total & 3 || total > limit) break;  /* not an EPB next_raw takes */
        if (end + total > size) break;                      /* not all here yet */
        if (!epb_ok(base + end, total, interfaces)) break;
        end += total;
        n++;
    }
    if (n == 0) {
        result = Py_BuildValue("(nn)", (Py_ssize_t)0, pos);
        goto done;
    }
    size_t bytes = (size_t)(end - (uint64_t)pos);
    if (reserve(src, bytes, n) < 0) goto done;
    unsigned char *copy = src->arena + src->alen;
    memcpy(copy, base + pos, bytes);
    if (!self->has_base) {
        /* As the pure twin's clock: the first run's base is its first packet's, or with one
         * scale and one high timestamp word, that word's. */
        int uniform = 1, one_high = 1;
        for (Py_ssize_t i = 1; i < nmap; i++)
            if (scales[i].mul != scales[0].mul || scales[i].div != scales[0].div
                || scales[i].off != scales[0].off) uniform = 0;
        uint32_t high0 = le32(copy + 12);
        for (size_t p = 0; p < bytes; p += le32(copy + p + 4))
            if (le32(copy + p + 12) != high0) { one_high = 0; break; }
        i128 first = uniform && one_high
            ? scaled(&scales[0], (uint64_t)high0 << 32)
            : scaled(&scales[le32(copy + 8)], (uint64_t)high0 << 32 | le32(copy + 16));
        self->base = floor32(first);
        self->has_base = 1;
    }
    size_t at = src->alen;
    for (size_t p = 0; p < bytes;) {
        unsigned char *b = copy + p;
        uint64_t total = le32(b + 4);
        uint32_t iid = le32(b + 8);
        Rec *r = &src->recs[src->n++];
        r->off = at + p;
        r->len = total;
        r->real = scaled(&scales[iid], (uint64_t)le32(b + 12) << 32 | le32(b + 16)) - self->base;
        put_le32(b + 8, newids[iid]);
        p += total;
    }
    src->alen += bytes;
    if (take(self, src) < 0) goto done;
    result = Py_BuildValue("(nK)", (Py_ssize_t)n, (unsigned long long)end);
done:
    if (have_view) PyBuffer_Release(&view);
    Py_DECREF(seq);
    PyMem_Free(newids);
    PyMem_Free(scales);
    return result;
}

/* add(source, blocks, stamps): whole blocks at `stamps` (ints, nanoseconds), taken as a run. */
static PyObject *fm_add(FileMerge *self, PyObject *args) {
    Py_ssize_t s;
    PyObject *blocks, *stamps;
    if (!PyArg_ParseTuple(args, "nOO", &s, &blocks, &stamps)) return NULL;
    Src *src = live_source(self, s);
    if (src == NULL) return NULL;
    PyObject *bseq = PySequence_Fast(blocks, "blocks must be a sequence");
    if (bseq == NULL) return NULL;
    PyObject *sseq = PySequence_Fast(stamps, "stamps must be a sequence");
    if (sseq == NULL) { Py_DECREF(bseq); return NULL; }
    PyObject *result = NULL;
    i128 *keys = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(bseq);
    size_t bytes = 0;
    if (PySequence_Fast_GET_SIZE(sseq) != n) {
        PyErr_Format(PyExc_ValueError, "add: %zd stamps for %zd blocks",
                     PySequence_Fast_GET_SIZE(sseq), n);
        goto done;
    }
    if (n == 0) { result = Py_NewRef(Py_None); goto done; }
    keys = PyMem_Malloc((size_t)n * sizeof(i128));
    if (keys == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(bseq, i);
        if (!PyBytes_Check(b)) { PyErr_SetString(PyExc_TypeError, "blocks must be bytes"); goto done; }
        bytes += (size_t)PyBytes_GET_SIZE(b);
        if (to_i128(PySequence_Fast_GET_ITEM(sseq, i), &keys[i]) < 0) goto done;
        if (keys[i] <= -((i128)1 << 100) || keys[i] >= ((i128)1 << 100)) {
            PyErr_SetString(PyExc_OverflowError, "add: a timestamp beyond 2**100 ns");
            goto done;
        }
    }
    if (reserve(src, bytes, (size_t)n) < 0) goto done;
    if (!self->has_base) { self->base = floor32(keys[0]); self->has_base = 1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(bseq, i);
        size_t len = (size_t)PyBytes_GET_SIZE(b);
        if (len) memcpy(src->arena + src->alen, PyBytes_AS_STRING(b), len);
        Rec *r = &src->recs[src->n++];
        r->off = src->alen;
        r->len = len;
        r->real = keys[i] - self->base;
        src->alen += len;
    }
    if (take(self, src) < 0) goto done;
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(keys);
    Py_DECREF(bseq);
    Py_DECREF(sseq);
    return result;
}

static PyObject *fm_last_ns(FileMerge *self, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    if (s < 0 || s >= self->k) return PyErr_Format(PyExc_ValueError, "no source %zd", s);
    if (!self->src[s].has_last) Py_RETURN_NONE;
    return from_i128(self->src[s].last + self->base);
}

static PyObject *fm_frontier(FileMerge *self, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    if (s < 0 || s >= self->k) return PyErr_Format(PyExc_ValueError, "no source %zd", s);
    return from_i128(self->src[s].frontier);
}

static PyObject *fm_end(FileMerge *self, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    Src *src = live_source(self, s);
    if (src == NULL) return NULL;
    if (push(self, src, src->n) < 0) return NULL;
    src->live = 0;
    self->live--;
    Py_RETURN_NONE;
}

/* The pending bytes and a release at `bound`, as one string. */
static PyObject *pop_at(FileMerge *self, int bounded, i128 bound) {
    Cut *cuts = new_cuts(self);
    if (cuts == NULL) return NULL;
    size_t bytes, c = plan(self, bounded, bound, cuts, &bytes);
    Py_ssize_t *srcs = PyMem_Malloc((c ? c : 1) * sizeof(Py_ssize_t));
    size_t *ends = PyMem_Malloc((c ? c : 1) * sizeof(size_t));
    PyObject *out = NULL;
    if (srcs == NULL || ends == NULL) { PyErr_NoMemory(); goto done; }
    if (bytes > (size_t)PY_SSIZE_T_MAX - self->plen) { PyErr_NoMemory(); goto done; }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(self->plen + bytes));
    if (out == NULL) goto done;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    if (self->plen) memcpy(dst, self->pend, self->plen);
    for (size_t j = 0; j < c; j++) { srcs[j] = cuts[j].s; ends[j] = cuts[j].end; }
    release(self, cuts, c, dst + self->plen);
    consume(self, srcs, ends, c);
    self->plen = 0;
    self->pcount = 0;
done:
    PyMem_Free(cuts); PyMem_Free(srcs); PyMem_Free(ends);
    return out;
}

static PyObject *fm_pop(FileMerge *self, PyObject *unused) {
    i128 bound = 0;
    int bounded = bound_now(self, &bound);
    return pop_at(self, bounded, bound);
}

static PyObject *fm_flush(FileMerge *self, PyObject *unused) { return pop_at(self, 0, 0); }

static PyObject *fm_reordered(FileMerge *self, void *closure) {
    return PyLong_FromSsize_t(self->reordered);
}

static PyObject *fm_waiting(FileMerge *self, void *closure) {
    return PyLong_FromSsize_t(self->buffered + self->pcount);
}

static int fm_init(FileMerge *self, PyObject *args, PyObject *kwargs) {
    Py_ssize_t k, max_buffered, tie_cap;
    static char *names[] = {"sources", "max_buffered", "tie_run_cap", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nnn", names, &k, &max_buffered, &tie_cap))
        return -1;
    if (self->src != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FileMerge is initialised once");
        return -1;
    }
    if (k < 1 || k > (1 << 20) || max_buffered < 1 || tie_cap < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "FileMerge needs 1..2**20 sources, max_buffered >= 1, tie_run_cap >= 0");
        return -1;
    }
    self->src = PyMem_Calloc((size_t)k, sizeof(Src));
    if (self->src == NULL) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t s = 0; s < k; s++) {
        self->src[s].top = self->src[s].frontier = NEVER;
        self->src[s].live = 1;
    }
    self->k = self->live = k;
    self->max_buffered = max_buffered;
    self->tie_cap = tie_cap;
    self->top_released = NEVER;
    return 0;
}

static void fm_dealloc(FileMerge *self) {
    for (Py_ssize_t s = 0; self->src && s < self->k; s++) {
        PyMem_Free(self->src[s].arena);
        PyMem_Free(self->src[s].recs);
    }
    PyMem_Free(self->src);
    PyMem_Free(self->pend);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef fm_methods[] = {
    {"add_run", (PyCFunction)fm_add_run, METH_VARARGS,
     "add_run(source, interface_map, scales, buf, pos, max_block_size, interfaces)"
     " -> (taken, end): frame and take the run of EPBs at buf[pos:]."},
    {"add", (PyCFunction)fm_add, METH_VARARGS, "add(source, blocks, stamps): take whole blocks."},
    {"last_ns", (PyCFunction)fm_last_ns, METH_O, "The last timestamp taken from a source."},
    {"frontier", (PyCFunction)fm_frontier, METH_O, "A source's frontier (a key)."},
    {"end", (PyCFunction)fm_end, METH_O, "A source has ended: push what it held back."},
    {"pop", (PyCFunction)fm_pop, METH_NOARGS, "What may be written now, as one string."},
    {"flush", (PyCFunction)fm_flush, METH_NOARGS, "Everything still held, as one string."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fm_getset[] = {
    {"reordered", (getter)fm_reordered, NULL, "Packets written below an earlier one.", NULL},
    {"waiting", (getter)fm_waiting, NULL, "Packets buffered or released for the next pop.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FileMergeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pcapd._pcapngwalk.FileMerge",
    .tp_basicsize = sizeof(FileMerge),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FileMerge(sources, max_buffered, tie_run_cap): pcapd.merge.engine's contract.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fm_init,
    .tp_dealloc = (destructor)fm_dealloc,
    .tp_methods = fm_methods,
    .tp_getset = fm_getset,
};

static PyMethodDef methods[] = {
    {"epb_run", epb_run, METH_VARARGS, "Frame a run of little-endian EPBs (see packets.epb_run)."},
    {"check_epbs", check_epbs, METH_VARARGS, "Count a buffer of valid EPBs of one interface."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pcapngwalk", "The pcapng walker's hot loops in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pcapngwalk(void) {
    if (PyType_Ready(&FileMergeType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "FileMerge", (PyObject *)&FileMergeType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
