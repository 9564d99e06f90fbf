/* The trace probe's per-call record, compiled: an optional twin of the Python wrappers in
 * traced.py (`fixed` and `ending`) and of `Tracer.record` in tracer.py.
 *
 * Why: the probe's own cost lengthens the very lock holds it measures. A tight loop of
 * BEGIN IMMEDIATE / INSERT / COMMIT ran at about 0.75 of its bare speed with the Python
 * wrappers; most of what was left was their bytecode (../shared/TRACE-COST.md).
 *
 * A RecordedMethod is the `execute`, `executemany`, `executescript` (or argument-less `commit`
 * / `rollback`) of an instrumented connection or cursor class. It is a method descriptor with
 * vectorcall, so `conn.execute(sql)` allocates no bound method. It only makes the common call:
 * a plain SQL text (SQL_BITS[sql] == 0), no call of the connection in progress, the
 * arguments sqlite3 takes. It runs the base method, times it with the clock
 * time.monotonic_ns() uses, and appends the same 7-field short record as Tracer.record.
 * Everything else goes to the Python code, so the semantics live in one place:
 *   - other call shapes, special SQL, nested calls: the Python wrapper itself (`twin`, or
 *     `odd` for call shapes sqlite3's methods do not take), before anything is done;
 *   - a failure (Tracer.failed) and a call recorded in full (Tracer.record, which hands it to
 *     _record_full), through `stand_in`, a Python function that takes the frame the Python
 *     wrapper would have: the call site finder skips a fixed number of frames.
 * A recording problem never reaches the program (an Exception is cleared: the result is
 * returned); an exception of the base method is re-raised unchanged, the same object.
 *
 * Attributes of the probe's own slotted objects (the connection's `_lockprobe`, the
 * per-connection `_Connection`, the ConnectionProbe) are read at their slot offsets, found
 * once per type from the type's member descriptors: a getattr costs about as much as the
 * rest of the record. Any other shape of object is read with getattr.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <marshal.h>
#include <stdint.h>
#include <sched.h>
#include <time.h>
#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>  /* PyFrameObject's fields, PyFrame_GetBack */
#endif

#if PY_VERSION_HEX < 0x030C0000
#define T_OBJECT_EX_ T_OBJECT_EX
#define T_OBJECT_ T_OBJECT
#define READONLY_ READONLY
#else
#define T_OBJECT_EX_ Py_T_OBJECT_EX
#define T_OBJECT_ _Py_T_OBJECT
#define READONLY_ Py_READONLY
#endif

/* ------------------------------------------------------------------------- the clock */

/* Nanoseconds of the clock time.monotonic_ns() reads: CLOCK_MONOTONIC on Linux (events of
 * every process are merged by it), the interpreter's own monotonic clock elsewhere. */
static inline long long
monotonic_ns(void)
{
#if defined(__linux__)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#elif PY_VERSION_HEX >= 0x030D0000
    PyTime_t t = 0;
    (void)PyTime_MonotonicRaw(&t);
    return (long long)t;
#else
    return (long long)_PyTime_GetMonotonicClock();
#endif
}

/* ------------------------------------------------------------- slots read at offsets */

/* Interned attribute names, made once by the module. */
static PyObject *s_lockprobe, *s_connection, *s_in_transaction, *s_active, *s_statements,
    *s_probe, *s_ident, *s_key, *s_in_txn, *s_site, *s_folded, *s_busy_unclaimed,
    *s_recording, *s_recording_property, *s_get_running_loop, *s_key_method, *s_site_method,
    *s_append, *s_pack;
static PyObject *zero;      /* the int 0 (state.active after a call) */
static PyObject *no_loop;   /* type(None): tracer._get_running_loop before asyncio loads */

#define MAX_SLOTS 8

/* Where the named attributes of one type's instances are: a slot offset each (0: read with
 * getattr). Resolved again when an object of another type comes. */
typedef struct {
    PyTypeObject *type;  /* strong reference, or NULL: not resolved yet */
    Py_ssize_t offset[MAX_SLOTS];
} SlotMap;

/* The offset of `name` on instances of `type` when it is a plain object slot (a member
 * descriptor, as __slots__ and C members make), else 0. `writable`: a slot this code also
 * sets (then it must be a writable T_OBJECT_EX slot, as __slots__ makes). */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name, int writable)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    Py_ssize_t offset = 0;
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        int ok = writable ? (member->type == T_OBJECT_EX_ && !(member->flags & READONLY_))
                          : (member->type == T_OBJECT_EX_ || member->type == T_OBJECT_);
        if (ok && member->offset > 0 &&
            PyType_IsSubtype(type, ((PyDescrObject *)descr)->d_type)) {
            offset = member->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

static inline void
slotmap_use(SlotMap *map, PyTypeObject *type, PyObject *const *names, int count, int writable)
{
    if (map->type == type) {
        return;
    }
    for (int i = 0; i < count; i++) {
        map->offset[i] = slot_offset(type, names[i], writable);
    }
    Py_INCREF(type);
    Py_XSETREF(map->type, type);
}

/* obj.<name>, a new reference; NULL with an exception set when it has none. A T_OBJECT slot
 * (read-only C members such as Cursor.connection) reads as None when empty, as getattr does. */
static inline PyObject *
slot_get(SlotMap *map, PyObject *obj, int index, PyObject *name)
{
    Py_ssize_t offset = map->offset[index];
    if (offset) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.<name> = value; -1 with an exception set on failure. */
static inline int
slot_set(SlotMap *map, PyObject *obj, int index, PyObject *name, PyObject *value)
{
    Py_ssize_t offset = map->offset[index];
    if (offset) {
        PyObject **slot = (PyObject **)((char *)obj + offset);
        Py_XSETREF(*slot, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

/* The truth of a value, fast for what the probe stores (bools, small ints, None). */
static inline int
truth(PyObject *value)
{
    if (value == Py_True) {
        return 1;
    }
    if (value == Py_False || value == Py_None || value == zero) {
        return 0;
    }
    return PyObject_IsTrue(value);
}

/* Indexes of each SlotMap's names. */
enum { CONN_LOCKPROBE, CONN_IN_TRANSACTION, CONN_SLOTS };
enum { CURSOR_CONNECTION, CURSOR_SLOTS };
enum {
    STATE_ACTIVE, STATE_STATEMENTS, STATE_PROBE, STATE_IDENT, STATE_KEY, STATE_IN_TXN,
    STATE_SITE, STATE_FOLDED, STATE_SLOTS
};
enum { PROBE_BUSY_UNCLAIMED, PROBE_SLOTS };
enum { TRACER_RECORDING, TRACER_GET_RUNNING_LOOP, TRACER_SLOTS };

static PyObject *conn_names[CONN_SLOTS], *cursor_names[CURSOR_SLOTS],
    *state_names[STATE_SLOTS], *probe_names[PROBE_SLOTS], *tracer_names[TRACER_SLOTS];

/* ------------------------------------------------------------------- RecordedMethod */

#define PLAIN_CACHE 8

/* What both compiled methods (RecordedMethod, CursorMethod) start with: method descriptors
 * with vectorcall that stand in for sqlite3's own method (`base`) and hand every call they do
 * not make themselves to their Python wrapper (`twin`). */
#define STAND_IN_HEAD           \
    PyObject_HEAD               \
    vectorcallfunc vectorcall;  \
    PyObject *twin;             \
    PyObject *base;

typedef struct {
    STAND_IN_HEAD
} StandIn;

typedef struct {
    STAND_IN_HEAD
    PyObject *odd;           /* the Python wrapper for call shapes sqlite3 does not take */
    PyObject *tracer;
    PyObject *sql;           /* "COMMIT" / "ROLLBACK" for an ending method; NULL: SQL given */
    PyObject *op;            /* the op number (traced.OP_*) as an int */
    PyObject *sql_bits;      /* traced.SQL_BITS */
    PyObject *record;        /* tracer.record */
    PyObject *failed;        /* tracer.failed */
    PyObject *stand_in;      /* traced._from_compiled */
    long long long_call_ns;  /* tracer.LONG_CALL_NS */
    Py_ssize_t budget;       /* tracer.StatementBudget.LIMIT */
    int on_connection;       /* a connection's method (else a cursor's) */
    /* caches */
    SlotMap conn_map, cursor_map, state_map, probe_map, tracer_map;
    getter in_transaction;   /* Connection.in_transaction's C getter, for conn_map.type */
    void *in_transaction_closure;
    unsigned long ident_value;  /* the thread ident ident_obj holds */
    PyObject *ident_obj;
    PyObject *key;           /* the last record key seen, and key + op */
    PyObject *key_op;
    PyObject *recording;     /* the last EventFile seen, and its append */
    PyObject *append;
    PyObject *append_list;   /* the list `append` appends to, when it is list.append */
    int buffered;            /* `recording` flushes with pack_records: records are buffered */
    PyObject *places;        /* tracer.call_sites' caches (see cached_site), or NULL */
    PyObject *sites;
    PyObject *user_kind;
    /* The site last found for a call made from the application's own frame: a function of
     * that frame's (code, f_lasti) alone, as in CallSites (its code kept: ids stay unique). */
    PyObject *site_code;
    int site_lasti;
    PyObject *site;
    /* SQL texts SQL_BITS last said were plain (0): its classification of a text never
     * changes (the dict is only emptied when full, and the text classified again). */
    PyObject *plain[PLAIN_CACHE];
    int plain_next;
} RecordedMethod;

static int
rm_traverse(RecordedMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->twin);
    Py_VISIT(self->odd);
    Py_VISIT(self->tracer);
    Py_VISIT(self->base);
    Py_VISIT(self->sql);
    Py_VISIT(self->op);
    Py_VISIT(self->sql_bits);
    Py_VISIT(self->record);
    Py_VISIT(self->failed);
    Py_VISIT(self->stand_in);
    Py_VISIT(self->key);
    Py_VISIT(self->key_op);
    Py_VISIT(self->recording);
    Py_VISIT(self->append);
    Py_VISIT(self->ident_obj);
    Py_VISIT(self->append_list);
    Py_VISIT(self->places);
    Py_VISIT(self->sites);
    Py_VISIT(self->user_kind);
    Py_VISIT(self->site_code);
    Py_VISIT(self->site);
    for (int i = 0; i < PLAIN_CACHE; i++) {
        Py_VISIT(self->plain[i]);
    }
    /* The types whose slots are cached: a connection class holds this method in its dict. */
    Py_VISIT(self->conn_map.type);
    Py_VISIT(self->cursor_map.type);
    Py_VISIT(self->state_map.type);
    Py_VISIT(self->probe_map.type);
    Py_VISIT(self->tracer_map.type);
    return 0;
}

static int
rm_clear(RecordedMethod *self)
{
    Py_CLEAR(self->twin);
    Py_CLEAR(self->odd);
    Py_CLEAR(self->tracer);
    Py_CLEAR(self->base);
    Py_CLEAR(self->sql);
    Py_CLEAR(self->op);
    Py_CLEAR(self->sql_bits);
    Py_CLEAR(self->record);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->stand_in);
    Py_CLEAR(self->key);
    Py_CLEAR(self->key_op);
    Py_CLEAR(self->recording);
    Py_CLEAR(self->append);
    Py_CLEAR(self->ident_obj);
    Py_CLEAR(self->append_list);
    Py_CLEAR(self->places);
    Py_CLEAR(self->sites);
    Py_CLEAR(self->user_kind);
    Py_CLEAR(self->site_code);
    Py_CLEAR(self->site);
    for (int i = 0; i < PLAIN_CACHE; i++) {
        Py_CLEAR(self->plain[i]);
    }
    Py_CLEAR(self->conn_map.type);
    Py_CLEAR(self->cursor_map.type);
    Py_CLEAR(self->state_map.type);
    Py_CLEAR(self->probe_map.type);
    Py_CLEAR(self->tracer_map.type);
    return 0;
}

static void
rm_dealloc(RecordedMethod *self)
{
    PyObject_GC_UnTrack(self);
    rm_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* conn.in_transaction, by Connection's own C getter when conn is of the type resolved. */
static inline PyObject *
in_transaction(RecordedMethod *self, PyObject *conn)
{
    if (self->in_transaction != NULL && Py_TYPE(conn) == self->conn_map.type) {
        return self->in_transaction(conn, self->in_transaction_closure);
    }
    return PyObject_GetAttr(conn, s_in_transaction);
}

static void
resolve_connection_type(RecordedMethod *self, PyTypeObject *type)
{
    if (self->conn_map.type == type) {
        return;
    }
    slotmap_use(&self->conn_map, type, conn_names, 1, 0);
    self->conn_map.offset[CONN_IN_TRANSACTION] = 0;
    self->in_transaction = NULL;
    PyObject *descr = PyObject_GetAttr((PyObject *)type, s_in_transaction);
    if (descr == NULL) {
        PyErr_Clear();
        return;
    }
    if (Py_IS_TYPE(descr, &PyGetSetDescr_Type) &&
        PyType_IsSubtype(type, ((PyDescrObject *)descr)->d_type)) {
        PyGetSetDef *def = ((PyGetSetDescrObject *)descr)->d_getset;
        self->in_transaction = def->get;
        self->in_transaction_closure = def->closure;
    }
    Py_DECREF(descr);
}

/* The call made by the Python code instead: `wrapper(*args)`, exactly as it came. */
static PyObject *
delegate(PyObject *wrapper, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(wrapper, args, nargsf, kwnames);
}

/* The record key plus this method's op (cached for the last key seen). */
static PyObject *
key_plus_op(RecordedMethod *self, PyObject *key)
{
    if (key == self->key && self->key_op != NULL) {
        return Py_NewRef(self->key_op);
    }
    PyObject *key_op = PyNumber_Add(key, self->op);
    if (key_op == NULL) {
        return NULL;
    }
    Py_XSETREF(self->key, Py_NewRef(key));
    Py_XSETREF(self->key_op, Py_NewRef(key_op));
    return key_op;
}

/* tracer.<name> for one of its hot attributes (_recording, _get_running_loop): slots of
 * Tracer's (its __slots__), read at their offsets; getattr on any other object. A new
 * reference, or NULL. */
static inline PyObject *
tracer_attr(RecordedMethod *self, int index, PyObject *name)
{
    slotmap_use(&self->tracer_map, Py_TYPE(self->tracer), tracer_names, TRACER_SLOTS, 0);
    return slot_get(&self->tracer_map, self->tracer, index, name);
}

static PyCFunction list_append_function;  /* the C function of list.append */

/* ------------------------------------------------------------------ the record buffer */

/* Short records kept as C structs until the flusher packs them (pack_records). Made as tuples,
 * the 7-tuple and its two 64-bit ints cost about 350 instructions a call on the program's
 * thread, and their marshal about 1,500 on the flusher's, which holds the GIL meanwhile: the
 * program's thread waits for it after its next call into SQLite. Packed, a record costs about
 * 100 in all (benchmarks/README.md, "trace").
 *
 * A RecordBuffer stands in an EventFile's pending list for the records it holds. A record goes
 * into the buffer that is the list's last item, else into a new one appended to the list: the
 * records keep their place among the events Python appends (a record key stays before every
 * record that names it), and the flusher writes each buffer as a chunk of its own, in order.
 * Everything here runs under the GIL. */

#define BUFFER_RECORDS 4096

typedef struct {
    long long t0, t1;
    PyObject *key_op, *sql, *stmts, *in_txn, *site;  /* strong references */
} BufferedRecord;

typedef struct {
    PyObject_HEAD
    Py_ssize_t used, size;
    int sealed;  /* packed: records go to a new buffer */
    BufferedRecord *records;
} RecordBuffer;

static PyTypeObject RecordBufferType;
static PyObject *current_buffer;  /* the buffer records went to last (strong), or NULL */
static PyObject *pack_function;  /* the module's pack_records */

static void
rb_release(RecordBuffer *self)
{
    for (Py_ssize_t i = 0; i < self->used; i++) {
        BufferedRecord *r = &self->records[i];
        Py_XDECREF(r->key_op);
        Py_XDECREF(r->sql);
        Py_XDECREF(r->stmts);
        Py_XDECREF(r->in_txn);
        Py_XDECREF(r->site);
    }
    self->used = 0;
}

static void
rb_dealloc(RecordBuffer *self)
{
    rb_release(self);
    PyMem_Free(self->records);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
rb_length(RecordBuffer *self)
{
    return self->used;
}

static PySequenceMethods rb_as_sequence = {.sq_length = (lenfunc)rb_length};

static PyTypeObject RecordBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sqlite_lockprobe.probe._speedups.RecordBuffer",
    .tp_doc = "Short trace records kept in C until the flusher packs them (pack_records).",
    .tp_basicsize = sizeof(RecordBuffer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)rb_dealloc,
    .tp_as_sequence = &rb_as_sequence,
};

/* Keep one short record in `list` (an EventFile's pending list). Takes the references to
 * key_op and stmts; borrows the rest. 0, or -1 with an exception set. */
static int
buffer_record(PyObject *list, long long t0, long long t1, PyObject *key_op, PyObject *sql,
              PyObject *stmts, PyObject *in_txn, PyObject *site)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    RecordBuffer *buffer = (RecordBuffer *)current_buffer;
    if (buffer == NULL || buffer->sealed || buffer->used == BUFFER_RECORDS || n == 0 ||
        PyList_GET_ITEM(list, n - 1) != current_buffer) {
        buffer = PyObject_New(RecordBuffer, &RecordBufferType);
        if (buffer == NULL) {
            goto fail;
        }
        buffer->used = buffer->size = 0;
        buffer->sealed = 0;
        buffer->records = NULL;
        if (PyList_Append(list, (PyObject *)buffer) < 0) {
            Py_DECREF(buffer);
            goto fail;
        }
        Py_XSETREF(current_buffer, (PyObject *)buffer);
    }
    if (buffer->used == buffer->size) {
        Py_ssize_t size = buffer->size ? buffer->size * 4 : 16;
        if (size > BUFFER_RECORDS) {
            size = BUFFER_RECORDS;
        }
        BufferedRecord *records = PyMem_Realloc(buffer->records, size * sizeof(BufferedRecord));
        if (records == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        buffer->records = records;
        buffer->size = size;
    }
    BufferedRecord *r = &buffer->records[buffer->used++];
    r->t0 = t0;
    r->t1 = t1;
    r->key_op = key_op;
    r->sql = Py_NewRef(sql);
    r->stmts = stmts;
    r->in_txn = Py_NewRef(in_txn);
    r->site = Py_NewRef(site);
    return 0;
fail:
    Py_DECREF(key_op);
    Py_DECREF(stmts);
    return -1;
}

/* The 7-field short record (tracer.Tracer.record's) of its parts: steals key_op and stmts,
 * borrows the rest. Untracked by the collector when it holds only atomic values. */
static PyObject *
short_record(long long t0, long long t1, PyObject *key_op, PyObject *sql, PyObject *stmts,
             PyObject *in_txn, PyObject *site)
{
    PyObject *t0_obj = PyLong_FromLongLong(t0);
    PyObject *t1_obj = PyLong_FromLongLong(t1);
    PyObject *record = PyTuple_New(7);
    if (t0_obj == NULL || t1_obj == NULL || record == NULL) {
        Py_XDECREF(t0_obj);
        Py_XDECREF(t1_obj);
        Py_XDECREF(record);
        Py_DECREF(key_op);
        Py_DECREF(stmts);
        return NULL;
    }
    int atomic = PyUnicode_CheckExact(sql) && (site == Py_None || PyUnicode_CheckExact(site)) &&
                 (stmts == Py_None || !PyObject_GC_IsTracked(stmts)) && PyLong_CheckExact(key_op) &&
                 PyBool_Check(in_txn);
    PyTuple_SET_ITEM(record, 0, t0_obj);
    PyTuple_SET_ITEM(record, 1, t1_obj);
    PyTuple_SET_ITEM(record, 2, key_op);
    PyTuple_SET_ITEM(record, 3, Py_NewRef(sql));
    PyTuple_SET_ITEM(record, 4, stmts);
    PyTuple_SET_ITEM(record, 5, Py_NewRef(in_txn));
    PyTuple_SET_ITEM(record, 6, Py_NewRef(site));
    if (atomic) {
        PyObject_GC_UnTrack(record);
    }
    return record;
}

/* pack_records(buffer): the buffer's records as one packed chunk payload, and the buffer
 * emptied (sealed: nothing more goes in). The flusher writes it as it is: marshal cost about
 * 1,500 instructions a record and holds the GIL meanwhile, which the program's thread waits
 * for after each call; this is about 100. Layout (eventfile.unpack_records reads it):
 *   "LPK1", u32 count, u32 n: the magic, the number of records, the table's size;
 *   n bytes: marshal (version 4) of a list, the table of the records' objects;
 *   count records of 36 bytes: i64 t0, i64 t1, then five u32 indexes into the table for
 *   key + op, sql, statements, in_txn and call site;
 * all little-endian. The table holds each object once, by identity. */

#define PACKED_MAGIC "LPK1"
#define PACKED_HEAD 12
#define PACKED_RECORD 36

typedef struct {
    PyObject *key;
    uint32_t index;
} TableSlot;

typedef struct {
    TableSlot *slots;
    size_t mask;
    size_t filled;
    PyObject *objects;  /* list, in index order */
} ObjectTable;

static inline size_t
pointer_hash(PyObject *p)
{
    return (size_t)(((uint64_t)(uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ULL >> 20);
}

/* The table index of `obj`, added when new. -1 with an exception set on failure. */
static long long
table_index(ObjectTable *table, PyObject *obj)
{
    size_t i = pointer_hash(obj) & table->mask;
    while (table->slots[i].key != NULL) {
        if (table->slots[i].key == obj) {
            return table->slots[i].index;
        }
        i = (i + 1) & table->mask;
    }
    if ((table->filled + 1) * 2 > table->mask + 1) {  /* keep it at most half full */
        size_t size = (table->mask + 1) * 2;
        TableSlot *slots = PyMem_Calloc(size, sizeof(TableSlot));
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t j = 0; j <= table->mask; j++) {
            PyObject *key = table->slots[j].key;
            if (key != NULL) {
                size_t k = pointer_hash(key) & (size - 1);
                while (slots[k].key != NULL) {
                    k = (k + 1) & (size - 1);
                }
                slots[k] = table->slots[j];
            }
        }
        PyMem_Free(table->slots);
        table->slots = slots;
        table->mask = size - 1;
        i = pointer_hash(obj) & table->mask;
        while (table->slots[i].key != NULL) {
            i = (i + 1) & table->mask;
        }
    }
    Py_ssize_t index = PyList_GET_SIZE(table->objects);
    if (PyList_Append(table->objects, obj) < 0) {
        return -1;
    }
    table->slots[i].key = obj;  /* kept alive by the list */
    table->slots[i].index = (uint32_t)index;
    table->filled++;
    return index;
}

static inline void
put_u32(unsigned char *at, uint32_t v)
{
    at[0] = (unsigned char)v;
    at[1] = (unsigned char)(v >> 8);
    at[2] = (unsigned char)(v >> 16);
    at[3] = (unsigned char)(v >> 24);
}

static inline void
put_i64(unsigned char *at, long long value)
{
    uint64_t v = (uint64_t)value;
    put_u32(at, (uint32_t)v);
    put_u32(at + 4, (uint32_t)(v >> 32));
}

static PyObject *
pack_records(PyObject *module, PyObject *arg)
{
    if (!Py_IS_TYPE(arg, &RecordBufferType)) {
        PyErr_SetString(PyExc_TypeError, "pack_records: a RecordBuffer");
        return NULL;
    }
    RecordBuffer *buffer = (RecordBuffer *)arg;
    buffer->sealed = 1;
    Py_ssize_t count = buffer->used;
    PyObject *body = NULL, *marshalled = NULL, *result = NULL;
    ObjectTable table = {PyMem_Calloc(64, sizeof(TableSlot)), 63, 0, PyList_New(0)};
    if (table.slots == NULL || table.objects == NULL) {
        if (table.slots == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    body = PyBytes_FromStringAndSize(NULL, count * PACKED_RECORD);
    if (body == NULL) {
        goto done;
    }
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(body);
    for (Py_ssize_t i = 0; i < count; i++, at += PACKED_RECORD) {
        BufferedRecord *r = &buffer->records[i];
        PyObject *fields[5] = {r->key_op, r->sql, r->stmts, r->in_txn, r->site};
        put_i64(at, r->t0);
        put_i64(at + 8, r->t1);
        for (int f = 0; f < 5; f++) {
            long long index = table_index(&table, fields[f]);
            if (index < 0) {
                goto done;
            }
            put_u32(at + 16 + 4 * f, (uint32_t)index);
        }
    }
    marshalled = PyMarshal_WriteObjectToString(table.objects, 4);
    if (marshalled == NULL) {
        goto done;
    }
    Py_ssize_t table_size = PyBytes_GET_SIZE(marshalled);
    result = PyBytes_FromStringAndSize(NULL, PACKED_HEAD + table_size + count * PACKED_RECORD);
    if (result == NULL) {
        goto done;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    memcpy(out, PACKED_MAGIC, 4);
    put_u32(out + 4, (uint32_t)count);
    put_u32(out + 8, (uint32_t)table_size);
    memcpy(out + PACKED_HEAD, PyBytes_AS_STRING(marshalled), (size_t)table_size);
    memcpy(out + PACKED_HEAD + table_size, PyBytes_AS_STRING(body), (size_t)count * PACKED_RECORD);
    rb_release(buffer);
done:
    PyMem_Free(table.slots);
    Py_XDECREF(table.objects);
    Py_XDECREF(body);
    Py_XDECREF(marshalled);
    return result;
}

/* Find the tracer's recording, `self._recording or self.recording`, and cache its append (its
 * list's append) and whether it takes buffered records, per recording. 0, or -1. */
static int
use_recording(RecordedMethod *self)
{
    PyObject *recording = tracer_attr(self, TRACER_RECORDING, s_recording);
    if (recording == NULL) {
        return -1;
    }
    if (recording == Py_None) {  /* `self._recording or self.recording` */
        Py_DECREF(recording);
        recording = PyObject_GetAttr(self->tracer, s_recording_property);
        if (recording == NULL) {
            return -1;
        }
    }
    if (recording != self->recording || self->append == NULL) {
        PyObject *append = PyObject_GetAttr(recording, s_append);
        if (append == NULL) {
            Py_DECREF(recording);
            return -1;
        }
        PyObject *list = NULL;
        if (PyCFunction_Check(append) && PyCFunction_GET_FUNCTION(append) == list_append_function &&
            PyList_CheckExact(PyCFunction_GET_SELF(append))) {
            list = Py_NewRef(PyCFunction_GET_SELF(append));
        }
        PyObject *pack = PyObject_GetAttr(recording, s_pack);
        if (pack == NULL) {
            PyErr_Clear();
        }
        self->buffered = list != NULL && pack != NULL && pack == pack_function;
        Py_XDECREF(pack);
        Py_XSETREF(self->append, append);
        Py_XSETREF(self->append_list, list);
        Py_XSETREF(self->recording, Py_NewRef(recording));
    }
    Py_DECREF(recording);
    return 0;
}

/* Append `record` to the recording use_recording found. 0, or -1. */
static int
append_record(RecordedMethod *self, PyObject *record)
{
    if (self->append_list != NULL) {
        return PyList_Append(self->append_list, record);
    }
    PyObject *result = PyObject_CallOneArg(self->append, record);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* ------------------------------------------------------------ the statement list */

/* SQLite's trace hook, compiled. sqlite3's own (Connection.set_trace_callback) takes the GIL
 * back in the middle of sqlite3_step for every statement, expands its parameter values into
 * a new string (sqlite3_expanded_sql) and makes a str of it: about 2,100 instructions a
 * statement, and a thread that holds a write lock waits for the GIL meanwhile. This hook is
 * registered with sqlite3_trace_v2 (reached through the address ctypes gives) and runs without
 * the GIL: it copies the statement's text, as it was prepared (sqlite3_sql: placeholders, not
 * the values), into a buffer under its own small lock. A StatementList is the probe's `statements` list: it
 * behaves as a list of str (len, items, slices, iteration, append, extend, pop, clear) and
 * makes the buffered texts strs only when they are read as such. The common call, one
 * statement, its own, is recorded by RecordedMethod from the length alone, and cleared: no
 * str is made for it at all. */

#define TRACE_STMT 0x01   /* SQLITE_TRACE_STMT */
#define TRACE_CLOSE 0x08  /* SQLITE_TRACE_CLOSE */
#define TEXT_CACHE 8

typedef int (*trace_callback)(unsigned, void *, void *, void *);
typedef int (*trace_v2_function)(void *, unsigned, trace_callback, void *);
typedef const char *(*sql_function)(void *);

/* The buffer's lock. It is held only while a text is copied in or the buffer is taken out,
 * by the thread that runs the statement and the thread that records the call (usually the
 * same one), so it is almost never contended: a spin lock costs a few instructions where
 * PyThread's lock (a semaphore) cost about 120 a use, three uses a call. */
static inline void
buffer_lock(int *lock)
{
    while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(lock, __ATOMIC_RELAXED)) {
            sched_yield();  /* the holder may have been preempted mid-copy */
        }
    }
}

static inline void
buffer_unlock(int *lock)
{
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
}

/* The buffer the hook writes. Its own allocation: it lives until both the StatementList and
 * the hook's registration have let go of it (SQLite tells the hook when the connection closes:
 * the list may go first, or the connection). */
typedef struct {
    int lock;         /* a spin lock (buffer_lock): held for a copy, rarely contended */
    int refs;
    int discard;      /* the list is gone: texts are not kept */
    char *texts;      /* statements, each NUL-terminated, back to back */
    size_t used, size;
    Py_ssize_t count;
    sql_function sql;  /* sqlite3_sql */
} Pending;

typedef struct {
    PyObject_HEAD
    PyObject *list;   /* the statements read already, in order; the pending ones follow */
    Pending *pending;
    void *db;
    trace_v2_function trace_v2;
    int registered;
    PyObject *recent[TEXT_CACHE];  /* strs made last: the same text gives the same str */
    int recent_next;
} StatementList;

static PyTypeObject StatementListType;

static void
pending_release(Pending *p)
{
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(p->texts);
        free(p);
    }
}

/* The hook: SQLite calls it on the thread that runs the statement, without the GIL. */
static int
statement_traced(unsigned type, void *context, void *stmt, void *text)
{
    Pending *p = (Pending *)context;
    if (type == TRACE_CLOSE) {
        pending_release(p);
        return 0;
    }
    if (type != TRACE_STMT || stmt == NULL) {
        return 0;
    }
    /* The statement's own text, as sqlite3's hook reports it (for a trigger's statements
     * too: the statement that fired it, again), not `text` (a trigger's comment). */
    (void)text;
    text = (void *)p->sql(stmt);
    if (text == NULL) {
        return 0;
    }
    size_t n = strlen((const char *)text) + 1;
    buffer_lock(&p->lock);
    if (!p->discard) {
        if (p->used + n > p->size) {
            size_t size = p->size ? p->size * 2 : 512;
            while (size < p->used + n) {
                size *= 2;
            }
            char *texts = realloc(p->texts, size);
            if (texts == NULL) {  /* the statement is not kept; the call goes on */
                buffer_unlock(&p->lock);
                return 0;
            }
            p->texts = texts;
            p->size = size;
        }
        memcpy(p->texts + p->used, text, n);
        p->used += n;
        p->count++;
    }
    buffer_unlock(&p->lock);
    return 0;
}

static inline Py_ssize_t
sl_pending(StatementList *self)
{
    buffer_lock(&self->pending->lock);
    Py_ssize_t count = self->pending->count;
    buffer_unlock(&self->pending->lock);
    return count;
}

/* A str of `text`: the one made last for the same text when there is one. */
static PyObject *
sl_str(StatementList *self, const char *text, size_t n)
{
    for (int i = 0; i < TEXT_CACHE; i++) {
        PyObject *known = self->recent[i];
        if (known == NULL) {
            continue;
        }
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(known, &size);
        if (utf8 != NULL && (size_t)size == n && memcmp(utf8, text, n) == 0) {
            return Py_NewRef(known);
        }
        PyErr_Clear();
    }
    PyObject *made = PyUnicode_DecodeUTF8(text, (Py_ssize_t)n, "replace");
    if (made == NULL) {
        return NULL;
    }
    Py_XSETREF(self->recent[self->recent_next], Py_NewRef(made));
    self->recent_next = (self->recent_next + 1) % TEXT_CACHE;
    return made;
}

/* Make the pending texts strs at the end of the list. The buffer is taken out under the lock
 * and read after it: making a str may run a collection, which may run Python code, which may
 * run a statement on this very connection (whose hook takes the lock). */
static int
sl_take_in(StatementList *self)
{
    Pending *p = self->pending;
    buffer_lock(&p->lock);
    if (p->count == 0) {
        buffer_unlock(&p->lock);
        return 0;
    }
    char *texts = p->texts;
    size_t used = p->used;
    Py_ssize_t count = p->count;
    p->texts = NULL;
    p->used = p->size = 0;
    p->count = 0;
    buffer_unlock(&p->lock);

    int status = 0;
    size_t at = 0;
    for (Py_ssize_t i = 0; i < count && at < used; i++) {
        size_t n = strlen(texts + at);
        PyObject *sql = sl_str(self, texts + at, n);
        if (sql == NULL || PyList_Append(self->list, sql) < 0) {
            Py_XDECREF(sql);
            status = -1;
            break;
        }
        Py_DECREF(sql);
        at += n + 1;
    }
    free(texts);
    return status;
}

/* Take every statement, read or pending, at once: a tuple of them (or, unless `keep_one`,
 * None for exactly one: the call's own, whose text the caller has). Threads sharing a connection record their calls
 * at the same time, and a record is made between steps where Python code may run (making a str
 * or a tuple may run a collection): reading the statements, then forgetting as many, would let
 * two calls report the same statement and drop another's. So the common case (nothing read,
 * one pending) is decided under the buffer's lock alone, and otherwise the read list is swapped
 * for an empty one and the pending texts taken out, before any str is made. */
static PyObject *
sl_take_all(StatementList *self, int keep_one)
{
    Pending *p = self->pending;
    if (PyList_GET_SIZE(self->list) == 0) {
        buffer_lock(&p->lock);
        Py_ssize_t count = p->count;
        if (count == 0 || (count == 1 && !keep_one)) {
            p->used = 0;  /* the buffer stays for the next statement */
            p->count = 0;
            buffer_unlock(&p->lock);
            return count == 1 ? Py_NewRef(Py_None) : PyTuple_New(0);
        }
        buffer_unlock(&p->lock);
    }
    PyObject *empty = PyList_New(0);
    if (empty == NULL) {
        return NULL;
    }
    PyObject *taken = self->list;  /* no Python code runs from here to the lock's release */
    self->list = empty;
    buffer_lock(&p->lock);
    char *texts = p->texts;
    size_t used = p->used;
    Py_ssize_t count = p->count;
    p->texts = NULL;
    p->used = p->size = 0;
    p->count = 0;
    buffer_unlock(&p->lock);

    size_t at = 0;
    for (Py_ssize_t i = 0; i < count && at < used; i++) {
        size_t n = strlen(texts + at);
        PyObject *sql = sl_str(self, texts + at, n);
        if (sql == NULL || PyList_Append(taken, sql) < 0) {
            Py_XDECREF(sql);
            free(texts);
            Py_DECREF(taken);
            return NULL;
        }
        Py_DECREF(sql);
        at += n + 1;
    }
    free(texts);
    PyObject *result = PyList_GET_SIZE(taken) == 1 && !keep_one ? Py_NewRef(Py_None)
                                                                 : PyList_AsTuple(taken);
    Py_DECREF(taken);
    return result;
}

/* The same for a plain list (sqlite3's own trace hook appends to it, under the GIL): the
 * statements are moved out with no Python code run between counting and removing them. */
static PyObject *
list_take_all(PyObject *list)
{
    for (;;) {
        Py_ssize_t count = PyList_GET_SIZE(list);
        if (count == 0) {
            return PyTuple_New(0);
        }
        if (count == 1) {  /* a str's deallocation runs no code; the list keeps its storage */
            PyObject *only = PyList_GET_ITEM(list, 0);
            Py_SET_SIZE(list, 0);
            Py_DECREF(only);
            return Py_NewRef(Py_None);
        }
        PyObject *taken = PyTuple_New(count);  /* may run code: counted again after */
        if (taken == NULL) {
            return NULL;
        }
        if (PyList_GET_SIZE(list) >= count) {
            for (Py_ssize_t i = 0; i < count; i++) {
                PyTuple_SET_ITEM(taken, i, Py_NewRef(PyList_GET_ITEM(list, i)));
            }
            if (PyList_SetSlice(list, 0, count, NULL) < 0) {
                Py_DECREF(taken);
                return NULL;
            }
            return taken;
        }
        Py_DECREF(taken);  /* another thread took some meanwhile: count again */
    }
}

/* statements.take(): every statement, read or pending, as a tuple, forgotten at once. */
static PyObject *
sl_take_method(StatementList *self, PyObject *unused)
{
    return sl_take_all(self, 1);
}

/* Forget every statement, read or pending, without making strs of them. */
static int
sl_clear_all(StatementList *self)
{
    Pending *p = self->pending;
    buffer_lock(&p->lock);
    p->used = 0;
    p->count = 0;
    buffer_unlock(&p->lock);
    Py_ssize_t size = PyList_GET_SIZE(self->list);
    if (size == 0) {
        return 0;
    }
    return PyList_SetSlice(self->list, 0, size, NULL);
}

static PyObject *
sl_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"db", "trace_v2", "sql", NULL};
    unsigned long long db, trace_v2, sql;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KKK:StatementList", names, &db, &trace_v2,
                                     &sql)) {
        return NULL;
    }
    if (db == 0 || trace_v2 == 0 || sql == 0) {
        PyErr_SetString(PyExc_ValueError, "StatementList: a connection handle and the addresses "
                                          "of sqlite3_trace_v2 and sqlite3_sql");
        return NULL;
    }
    StatementList *self = (StatementList *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->list = PyList_New(0);
    self->pending = calloc(1, sizeof(Pending));
    if (self->list == NULL || self->pending == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->pending->refs = 1;
    self->pending->sql = (sql_function)(uintptr_t)sql;
    self->db = (void *)(uintptr_t)db;
    self->trace_v2 = (trace_v2_function)(uintptr_t)trace_v2;
    return (PyObject *)self;
}


static void
sl_dealloc(StatementList *self)
{
    Py_CLEAR(self->list);
    for (int i = 0; i < TEXT_CACHE; i++) {
        Py_CLEAR(self->recent[i]);
    }
    Pending *p = self->pending;
    if (p != NULL) {
        buffer_lock(&p->lock);
        p->discard = 1;  /* still registered (the connection is open): keep nothing more */
        free(p->texts);
        p->texts = NULL;
        p->used = p->size = 0;
        p->count = 0;
        buffer_unlock(&p->lock);
        pending_release(p);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
sl_install(StatementList *self, PyObject *unused)
{
    if (!self->registered) {
        __atomic_add_fetch(&self->pending->refs, 1, __ATOMIC_ACQ_REL);  /* the registration's */
        int rc = self->trace_v2(self->db, TRACE_STMT | TRACE_CLOSE, statement_traced,
                                self->pending);
        if (rc != 0) {
            pending_release(self->pending);
            return PyBool_FromLong(0);
        }
        self->registered = 1;
    }
    Py_RETURN_TRUE;
}

static PyObject *
sl_detach(StatementList *self, PyObject *unused)
{
    if (self->registered) {
        /* The caller has just put another hook in its place (set_trace_callback): this one
         * is called no more, and will not hear of the close. */
        if (sl_take_in(self) < 0) {
            return NULL;
        }
        self->registered = 0;
        pending_release(self->pending);
    }
    Py_RETURN_NONE;
}

static PyObject *
sl_append(StatementList *self, PyObject *item)
{
    if (sl_take_in(self) < 0 || PyList_Append(self->list, item) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
sl_call_list(StatementList *self, const char *name, PyObject *const *args, Py_ssize_t nargs)
{
    if (sl_take_in(self) < 0) {
        return NULL;
    }
    PyObject *method = PyObject_GetAttrString(self->list, name);
    if (method == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(method, args, nargs, NULL);
    Py_DECREF(method);
    return result;
}

static PyObject *
sl_extend(StatementList *self, PyObject *items)
{
    return sl_call_list(self, "extend", &items, 1);
}

static PyObject *
sl_pop(StatementList *self, PyObject *const *args, Py_ssize_t nargs)
{
    return sl_call_list(self, "pop", args, nargs);
}

static PyObject *
sl_clear_method(StatementList *self, PyObject *unused)
{
    if (sl_clear_all(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
sl_length(StatementList *self)
{
    return PyList_GET_SIZE(self->list) + sl_pending(self);
}

static PyObject *
sl_subscript(StatementList *self, PyObject *key)
{
    if (sl_take_in(self) < 0) {
        return NULL;
    }
    return PyObject_GetItem(self->list, key);
}

static int
sl_ass_subscript(StatementList *self, PyObject *key, PyObject *value)
{
    if (sl_take_in(self) < 0) {
        return -1;
    }
    return value == NULL ? PyObject_DelItem(self->list, key)
                         : PyObject_SetItem(self->list, key, value);
}

static PyObject *
sl_iter(StatementList *self)
{
    if (sl_take_in(self) < 0) {
        return NULL;
    }
    return PyObject_GetIter(self->list);
}

static int
sl_contains(StatementList *self, PyObject *item)
{
    if (sl_take_in(self) < 0) {
        return -1;
    }
    return PySequence_Contains(self->list, item);
}

static PyObject *
sl_richcompare(StatementList *self, PyObject *other, int op)
{
    if (sl_take_in(self) < 0) {
        return NULL;
    }
    if (Py_IS_TYPE(other, &StatementListType)) {
        if (sl_take_in((StatementList *)other) < 0) {
            return NULL;
        }
        other = ((StatementList *)other)->list;
    }
    return PyObject_RichCompare(self->list, other, op);
}

static PyObject *
sl_repr(StatementList *self)
{
    if (sl_take_in(self) < 0) {
        return NULL;
    }
    return PyObject_Repr(self->list);
}

static PyMethodDef sl_methods[] = {
    {"install", (PyCFunction)sl_install, METH_NOARGS,
     "Register the hook on the connection (again); False when SQLite refused."},
    {"detach", (PyCFunction)sl_detach, METH_NOARGS,
     "Forget the registration: another trace callback has just replaced it."},
    {"append", (PyCFunction)sl_append, METH_O, "list.append"},
    {"extend", (PyCFunction)sl_extend, METH_O, "list.extend"},
    {"pop", (PyCFunction)(void (*)(void))sl_pop, METH_FASTCALL, "list.pop"},
    {"clear", (PyCFunction)sl_clear_method, METH_NOARGS, "list.clear, without reading"},
    {"take", (PyCFunction)sl_take_method, METH_NOARGS,
     "Every statement as a tuple, forgotten at once (threads may share the connection)."},
    {NULL},
};

static PySequenceMethods sl_as_sequence = {
    .sq_length = (lenfunc)sl_length,
    .sq_contains = (objobjproc)sl_contains,
};

static PyMappingMethods sl_as_mapping = {
    .mp_length = (lenfunc)sl_length,
    .mp_subscript = (binaryfunc)sl_subscript,
    .mp_ass_subscript = (objobjargproc)sl_ass_subscript,
};

static PyTypeObject StatementListType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sqlite_lockprobe.probe._speedups.StatementList",
    .tp_doc = "The statements SQLite's trace hook reported, kept by a compiled hook that "
              "runs without the GIL; a list of str to read.",
    .tp_basicsize = sizeof(StatementList),
    .tp_flags = Py_TPFLAGS_DEFAULT,  /* it holds strs alone: in no cycle */
    .tp_new = sl_new,
    .tp_dealloc = (destructor)sl_dealloc,
    .tp_as_sequence = &sl_as_sequence,
    .tp_as_mapping = &sl_as_mapping,
    .tp_iter = (getiterfunc)sl_iter,
    .tp_richcompare = (richcmpfunc)sl_richcompare,
    .tp_repr = (reprfunc)sl_repr,
    .tp_methods = sl_methods,
    .tp_hash = PyObject_HashNotImplemented,
};

/* Every statement traced since the last call, forgotten: None for exactly one (the call's
 * own), else a tuple. */
static inline PyObject *
take_statements(PyObject *statements)
{
    if (Py_IS_TYPE(statements, &StatementListType)) {
        return sl_take_all((StatementList *)statements, 0);
    }
    if (PyList_CheckExact(statements)) {
        return list_take_all(statements);
    }
    PyObject *taken = PySequence_Tuple(statements);
    if (taken == NULL || PySequence_DelSlice(statements, 0, PyTuple_GET_SIZE(taken)) < 0) {
        Py_XDECREF(taken);
        return NULL;
    }
    return taken;
}

/* Untrack a tuple none of whose items the cyclic collector tracks (ints, strs, None, bools,
 * such tuples): it can be in no cycle. The collector does so itself at its first pass over
 * it; the records wait in the recording's list for the flusher, and each collection of the
 * youngest generation would go over them first. */
static inline void
untrack_if_atomic(PyObject *tuple)
{
    Py_ssize_t size = PyTuple_GET_SIZE(tuple);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyObject_IS_GC(item) && PyObject_GC_IsTracked(item)) {
            return;
        }
    }
    PyObject_GC_UnTrack(tuple);
}

/* f_lasti of a frame, as Python code reads it (a byte offset; CallSites keys on it). */
static inline int
frame_lasti(PyFrameObject *frame)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(frame);
#else
    return frame->f_lasti < 0 ? -1 : frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
}

/* The call site as CallSites.find(1) would give it, read from its caches alone: the first
 * frame up from the caller whose file its `_places` says is the application's (USER), and
 * the site its `_sites` keeps for that (id(code), f_lasti). What the caches do not know
 * (a file or a line seen for the first time, a stack of library code only) is left to
 * CallSites.find, which fills them: classification and wording stay in callsite.py.
 * Returns `site` (stolen) when not known, else the site found in its place. */
static PyObject *
cached_site(RecordedMethod *self, PyObject *site)
{
    if (self->places == NULL || self->sites == NULL) {
        return site;
    }
    PyFrameObject *frame = PyEval_GetFrame();  /* borrowed */
    if (frame == NULL) {
        return site;
    }
    PyCodeObject *first = PyFrame_GetCode(frame);
    int first_lasti = frame_lasti(frame);
    Py_DECREF(first);  /* the frame keeps it */
    if ((PyObject *)first == self->site_code && first_lasti == self->site_lasti) {
        Py_DECREF(site);
        return Py_NewRef(self->site);
    }
    Py_INCREF(frame);
    PyObject *found = NULL;
    while (frame != NULL) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *place = PyDict_GetItemWithError(self->places, code->co_filename);
        if (place == NULL || !PyTuple_CheckExact(place) || PyTuple_GET_SIZE(place) != 2) {
            Py_DECREF(code);
            break;  /* a file seen for the first time: CallSites classifies it */
        }
        if (PyTuple_GET_ITEM(place, 0) == self->user_kind) {
            PyObject *id = PyLong_FromVoidPtr(code);
            PyObject *lasti = PyLong_FromLong(frame_lasti(frame));
            PyObject *key = (id && lasti) ? PyTuple_Pack(2, id, lasti) : NULL;
            Py_XDECREF(id);
            Py_XDECREF(lasti);
            PyObject *known = key ? PyDict_GetItemWithError(self->sites, key) : NULL;
            Py_XDECREF(key);
            if (known != NULL && PyTuple_CheckExact(known) && PyTuple_GET_SIZE(known) == 2 &&
                PyTuple_GET_ITEM(known, 0) == (PyObject *)code) {
                found = Py_NewRef(PyTuple_GET_ITEM(known, 1));
                if (code == first) {  /* the caller's own frame: remembered */
                    Py_XSETREF(self->site_code, Py_NewRef((PyObject *)code));
                    Py_XSETREF(self->site, Py_NewRef(found));
                    self->site_lasti = first_lasti;
                }
            }
            Py_DECREF(code);
            break;
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    PyErr_Clear();
    if (found == NULL) {
        return site;
    }
    Py_DECREF(site);
    return found;
}

/* Whether the calling thread is the one state.ident names. */
static inline int
same_thread(PyObject *ident, PyObject *current, unsigned long tid)
{
    if (ident == current) {
        return 1;
    }
    if (!PyLong_CheckExact(ident)) {
        int equal = PyObject_RichCompareBool(ident, current, Py_EQ);
        if (equal < 0) {
            PyErr_Clear();
            return 0;
        }
        return equal;
    }
    unsigned long value = PyLong_AsUnsignedLongMask(ident);
    if (value == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return value == tid;
}

/* Whether an event loop runs in this thread: tracer._get_running_loop() is not None. */
static inline int
loop_running(RecordedMethod *self)
{
    PyObject *get = tracer_attr(self, TRACER_GET_RUNNING_LOOP, s_get_running_loop);
    if (get == NULL) {
        return -1;
    }
    if (get == no_loop) {
        Py_DECREF(get);
        return 0;
    }
    PyObject *loop = PyObject_CallNoArgs(get);
    Py_DECREF(get);
    if (loop == NULL) {
        return -1;
    }
    int running = loop != Py_None;
    Py_DECREF(loop);
    return running;
}

/* Tracer.record for a call that went through: the short record, or Tracer.record itself for a
 * call it records in full. 0 on success, -1 with an exception set. */
static int
record_call(RecordedMethod *self, PyObject *state, PyObject *conn, PyObject *sql, long long t0,
            long long t1, PyObject *ident)
{
    PyObject *in_txn = NULL, *statements = NULL, *probe = NULL, *busy = NULL, *folded = NULL;
    PyObject *key = NULL, *site = NULL, *stmts = NULL, *record = NULL;
    PyObject *t0_obj = NULL, *t1_obj = NULL, *key_op = NULL, *result = NULL;
    int status = -1, full;
    Py_ssize_t count;

    slotmap_use(&self->state_map, Py_TYPE(state), state_names, STATE_SLOTS, 1);
    in_txn = in_transaction(self, conn);
    if (in_txn == NULL) {
        goto done;
    }
    statements = slot_get(&self->state_map, state, STATE_STATEMENTS, s_statements);
    if (statements == NULL) {
        goto done;
    }
    probe = slot_get(&self->state_map, state, STATE_PROBE, s_probe);
    if (probe == NULL) {
        goto done;
    }
    slotmap_use(&self->probe_map, Py_TYPE(probe), probe_names, PROBE_SLOTS, 0);
    busy = slot_get(&self->probe_map, probe, PROBE_BUSY_UNCLAIMED, s_busy_unclaimed);
    if (busy == NULL) {
        goto done;
    }
    folded = slot_get(&self->state_map, state, STATE_FOLDED, s_folded);
    if (folded == NULL) {
        goto done;
    }
    count = PyList_CheckExact(statements) ? PyList_GET_SIZE(statements)
                                          : PyObject_Length(statements);
    if (count < 0) {
        goto done;
    }
    if ((full = truth(busy)) < 0) {
        goto done;
    }
    if (!full && (full = truth(folded)) < 0) {
        goto done;
    }
    if (full || count > self->budget || t1 - t0 > self->long_call_ns) {
        /* Recorded in full: Tracer.record hands it to _record_full, from the frame the
         * Python wrapper would have (the call site is found a fixed number of frames up). */
        t0_obj = PyLong_FromLongLong(t0);
        t1_obj = PyLong_FromLongLong(t1);
        if (t0_obj == NULL || t1_obj == NULL) {
            goto done;
        }
        PyObject *args[] = {self->record, state, conn, self->op, sql, t0_obj, t1_obj, ident};
        result = PyObject_Vectorcall(self->stand_in, args, 8, NULL);
        if (result != NULL) {
            status = 0;
        }
        goto done;
    }

    /* Who calls: the key kept on the connection while the same thread calls outside an
     * event loop, else Tracer._key (which may give the call site of a driver's caller). */
    int same = 0;
    PyObject *state_ident = slot_get(&self->state_map, state, STATE_IDENT, s_ident);
    if (state_ident == NULL) {
        goto done;
    }
    same = same_thread(state_ident, ident, self->ident_value);
    Py_DECREF(state_ident);
    if (same) {
        int running = loop_running(self);
        if (running < 0) {
            goto done;
        }
        same = !running;
    }
    if (same) {
        key = slot_get(&self->state_map, state, STATE_KEY, s_key);
        if (key == NULL) {
            goto done;
        }
        site = slot_get(&self->state_map, state, STATE_SITE, s_site);
        if (site == NULL) {
            goto done;
        }
    }
    else {
        PyObject *args[] = {self->tracer, state, ident};
        PyObject *pair = PyObject_VectorcallMethod(s_key_method, args, 3, NULL);
        if (pair == NULL) {
            goto done;
        }
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "Tracer._key: not a (key, site) pair");
            goto done;
        }
        key = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        site = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }

    /* The transaction's call site: found when a call begins one, kept for its calls. */
    int now_in = truth(in_txn);
    if (now_in < 0) {
        goto done;
    }
    PyObject *was = slot_get(&self->state_map, state, STATE_IN_TXN, s_in_txn);
    if (was == NULL) {
        goto done;
    }
    int was_in = truth(was);
    Py_DECREF(was);
    if (was_in < 0) {
        goto done;
    }
    if (now_in) {
        if (!was_in) {
            if (slot_set(&self->state_map, state, STATE_IN_TXN, s_in_txn, Py_True) < 0) {
                goto done;
            }
            int known = truth(site);
            if (known < 0) {
                goto done;
            }
            if (!known) {
                site = cached_site(self, site);
                known = site != Py_None;
            }
            if (!known) {
                /* No Python frame of lockprobe's between CallSites.find and the caller. */
                PyObject *depth = PyLong_FromLong(1);
                if (depth == NULL) {
                    goto done;
                }
                PyObject *args[] = {self->tracer, depth};
                PyObject *found = PyObject_VectorcallMethod(s_site_method, args, 2, NULL);
                Py_DECREF(depth);
                if (found == NULL) {
                    goto done;
                }
                Py_SETREF(site, found);
            }
            if (slot_set(&self->state_map, state, STATE_SITE, s_site, site) < 0) {
                goto done;
            }
        }
    }
    else if (was_in) {
        if (slot_set(&self->state_map, state, STATE_IN_TXN, s_in_txn, Py_False) < 0 ||
            slot_set(&self->state_map, state, STATE_SITE, s_site, Py_None) < 0) {
            goto done;
        }
    }

    /* One statement is the call's own: its SQL is kept, not its parameter values. What is
     * taken is taken at once: another thread's call on the same connection may record now. */
    stmts = take_statements(statements);
    if (stmts == NULL) {
        goto done;
    }
    if (stmts != Py_None) {
        untrack_if_atomic(stmts);
    }
    key_op = key_plus_op(self, key);
    if (key_op == NULL) {
        goto done;
    }
    if (use_recording(self) < 0) {
        goto done;
    }
    if (self->buffered) {
        status = buffer_record(self->append_list, t0, t1, key_op, sql, stmts, in_txn, site);
        key_op = stmts = NULL;  /* the buffer's now */
        goto done;
    }
    record = short_record(t0, t1, key_op, sql, stmts, in_txn, site);
    key_op = stmts = NULL;  /* the record's now */
    if (record == NULL) {
        goto done;
    }
    status = append_record(self, record);

done:
    Py_XDECREF(in_txn);
    Py_XDECREF(statements);
    Py_XDECREF(probe);
    Py_XDECREF(busy);
    Py_XDECREF(folded);
    Py_XDECREF(key);
    Py_XDECREF(site);
    Py_XDECREF(stmts);
    Py_XDECREF(record);
    Py_XDECREF(t0_obj);
    Py_XDECREF(t1_obj);
    Py_XDECREF(key_op);
    Py_XDECREF(result);
    return status;
}

/* The current thread's ident as an int (threading.get_ident()), cached per thread seen last. */
static inline PyObject *
thread_ident(RecordedMethod *self)
{
    unsigned long tid = PyThread_get_thread_ident();
    if (self->ident_obj == NULL || self->ident_value != tid) {
        PyObject *obj = PyLong_FromUnsignedLong(tid);
        if (obj == NULL) {
            return NULL;
        }
        Py_XSETREF(self->ident_obj, obj);
        self->ident_value = tid;
    }
    return Py_NewRef(self->ident_obj);
}

/* A recording problem must never surface in the program: an Exception is dropped; what is
 * not one (KeyboardInterrupt from a wait the probe ended, SystemExit) goes on, as from the
 * Python wrapper. Returns `result`, or NULL when an exception goes on. */
static PyObject *
despite_recording_error(PyObject *result)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return result;
    }
    Py_DECREF(result);
    return NULL;
}

/* The base method raised: Tracer.failed records it (from the Python wrapper's frame depth)
 * and says whether the call's wait was ended by an interruption (Ctrl-C), raised instead,
 * chained to the SQLite error as the Python wrapper's `raise interrupt` is. Otherwise the
 * same exception goes on, unchanged. */
static PyObject *
call_failed(RecordedMethod *self, PyObject *state, PyObject *conn, PyObject *sql, long long t0)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc == NULL) {  /* cannot happen after a failed call: leave it as it came */
        PyErr_Restore(type, exc, tb);
        return NULL;
    }
    if (tb != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    PyObject *t0_obj = PyLong_FromLongLong(t0);
    PyObject *interrupt = NULL;
    if (t0_obj != NULL) {
        PyObject *args[] = {self->failed, state, conn, self->op, sql, t0_obj, exc};
        interrupt = PyObject_Vectorcall(self->stand_in, args, 7, NULL);
        Py_DECREF(t0_obj);
    }
    if (interrupt == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {  /* a new KeyboardInterrupt... */
            PyObject *type2, *exc2, *tb2;
            PyErr_Fetch(&type2, &exc2, &tb2);
            PyErr_NormalizeException(&type2, &exc2, &tb2);
            if (exc2 != NULL) {
                PyException_SetContext(exc2, Py_NewRef(exc));
            }
            Py_DECREF(type);
            Py_DECREF(exc);
            Py_XDECREF(tb);
            PyErr_Restore(type2, exc2, tb2);
            return NULL;
        }
        PyErr_Clear();
    }
    else if (interrupt != Py_None && PyExceptionInstance_Check(interrupt)) {
        if (interrupt != exc) {
            PyException_SetContext(interrupt, Py_NewRef(exc));
        }
        Py_DECREF(type);
        Py_DECREF(exc);
        Py_XDECREF(tb);
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(interrupt)), interrupt,
                      PyException_GetTraceback(interrupt));
        return NULL;
    }
    Py_XDECREF(interrupt);
    PyErr_Restore(type, exc, tb);
    return NULL;
}

static inline int
known_plain(RecordedMethod *self, PyObject *sql)
{
    for (int i = 0; i < PLAIN_CACHE; i++) {
        if (self->plain[i] == sql) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
rm_vectorcall(RecordedMethod *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *sql, *conn, *state, *active, *ident, *result;

    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        return delegate(self->odd, args, nargsf, kwnames);
    }
    if (self->sql == NULL) {
        if (nargs < 2 || nargs > 3) {
            return delegate(self->odd, args, nargsf, kwnames);
        }
        sql = args[1];
    }
    else {
        if (nargs != 1) {
            return delegate(self->odd, args, nargsf, kwnames);
        }
        sql = self->sql;
    }

    /* The connection the call is recorded on, and its probe state. Anything unexpected so
     * far: the Python wrapper makes the call (nothing has been done yet). */
    if (self->on_connection) {
        conn = Py_NewRef(args[0]);
    }
    else {
        slotmap_use(&self->cursor_map, Py_TYPE(args[0]), cursor_names, CURSOR_SLOTS, 0);
        conn = slot_get(&self->cursor_map, args[0], CURSOR_CONNECTION, s_connection);
        if (conn == NULL) {
            PyErr_Clear();
            return delegate(self->twin, args, nargsf, kwnames);
        }
    }
    resolve_connection_type(self, Py_TYPE(conn));
    state = slot_get(&self->conn_map, conn, CONN_LOCKPROBE, s_lockprobe);
    if (state == NULL) {
        PyErr_Clear();
        Py_DECREF(conn);
        return delegate(self->twin, args, nargsf, kwnames);
    }
    if (state == Py_None) {  /* not instrumented, or closed */
        Py_DECREF(state);
        Py_DECREF(conn);
        return PyObject_Vectorcall(self->base, args, nargs, NULL);
    }
    slotmap_use(&self->state_map, Py_TYPE(state), state_names, STATE_SLOTS, 1);
    active = slot_get(&self->state_map, state, STATE_ACTIVE, s_active);
    if (active == NULL) {
        PyErr_Clear();
        goto python;
    }
    int busy = truth(active);
    if (busy != 0) {
        /* A call made by a recorded call (Python 3.10's Connection.execute calls
         * cursor().execute): the outer one records it, as Tracer.call does. Another
         * thread's call in progress, or an unreadable state: the Python path. */
        PyErr_Clear();
        ident = busy > 0 ? thread_ident(self) : NULL;
        int nested = ident != NULL && same_thread(active, ident, self->ident_value);
        Py_XDECREF(ident);
        Py_DECREF(active);
        PyErr_Clear();
        if (nested) {
            Py_DECREF(state);
            Py_DECREF(conn);
            return PyObject_Vectorcall(self->base, args, nargs, NULL);
        }
        goto python;
    }
    Py_DECREF(active);
    if (self->sql == NULL && !known_plain(self, sql)) {  /* SQL_BITS[sql] == 0: plain */
        PyObject *bits = PyDict_GetItemWithError(self->sql_bits, sql);
        if (bits == NULL) {
            PyErr_Clear();  /* not classified yet, or not hashable: the Python path */
            goto python;
        }
        if (bits != zero) {
            Py_INCREF(bits);
            int plain = PyObject_RichCompareBool(bits, zero, Py_EQ);
            Py_DECREF(bits);
            if (plain != 1) {
                PyErr_Clear();
                goto python;
            }
        }
        Py_XSETREF(self->plain[self->plain_next], Py_NewRef(sql));
        self->plain_next = (self->plain_next + 1) % PLAIN_CACHE;
    }

    ident = thread_ident(self);
    if (ident == NULL || slot_set(&self->state_map, state, STATE_ACTIVE, s_active, ident) < 0) {
        Py_XDECREF(ident);
        PyErr_Clear();
        goto python;
    }
    long long t0 = monotonic_ns();
    result = PyObject_Vectorcall(self->base, args, nargs, NULL);
    if (result == NULL) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        if (slot_set(&self->state_map, state, STATE_ACTIVE, s_active, zero) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, exc, tb);
        call_failed(self, state, conn, sql, t0);
        Py_DECREF(ident);
        Py_DECREF(state);
        Py_DECREF(conn);
        return NULL;
    }
    long long t1 = monotonic_ns();
    if (slot_set(&self->state_map, state, STATE_ACTIVE, s_active, zero) < 0 ||
        record_call(self, state, conn, sql, t0, t1, ident) < 0) {
        result = despite_recording_error(result);
    }
    Py_DECREF(ident);
    Py_DECREF(state);
    Py_DECREF(conn);
    return result;

python:
    Py_DECREF(state);
    Py_DECREF(conn);
    return delegate(self->twin, args, nargsf, kwnames);
}

static PyObject *
stand_in_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
rm_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"twin", "odd", "tracer", "base", "op", "sql", "on_connection",
                            "sql_bits", "stand_in", "long_call_ns", "budget", "places",
                            "sites", "user_kind", NULL};
    PyObject *twin, *odd, *tracer, *base, *op, *sql, *sql_bits, *stand_in;
    PyObject *places = Py_None, *sites = Py_None, *user_kind = Py_None;
    int on_connection;
    long long long_call_ns;
    Py_ssize_t budget;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO!OpO!OLn|OOO:RecordedMethod", names,
                                     &twin, &odd, &tracer, &base, &PyLong_Type, &op, &sql,
                                     &on_connection, &PyDict_Type, &sql_bits, &stand_in,
                                     &long_call_ns, &budget, &places, &sites, &user_kind)) {
        return NULL;
    }
    if (sql != Py_None && !PyUnicode_Check(sql)) {
        PyErr_SetString(PyExc_TypeError, "sql: a str (commit, rollback) or None");
        return NULL;
    }
    if (PyLong_AsLongLong(op) == -1 && PyErr_Occurred()) {  /* an op number, as an int */
        return NULL;
    }
    PyObject *record = PyObject_GetAttrString(tracer, "record");
    if (record == NULL) {
        return NULL;
    }
    PyObject *failed = PyObject_GetAttrString(tracer, "failed");
    if (failed == NULL) {
        Py_DECREF(record);
        return NULL;
    }
    RecordedMethod *self = (RecordedMethod *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(record);
        Py_DECREF(failed);
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)rm_vectorcall;
    self->twin = Py_NewRef(twin);
    self->odd = Py_NewRef(odd);
    self->tracer = Py_NewRef(tracer);
    self->base = Py_NewRef(base);
    self->sql = sql == Py_None ? NULL : Py_NewRef(sql);
    self->op = Py_NewRef(op);
    self->sql_bits = Py_NewRef(sql_bits);
    self->record = record;
    self->failed = failed;
    self->stand_in = Py_NewRef(stand_in);
    self->long_call_ns = long_call_ns;
    self->budget = budget;
    self->on_connection = on_connection;
    if (PyDict_CheckExact(places) && PyDict_CheckExact(sites) && user_kind != Py_None) {
        self->places = Py_NewRef(places);
        self->sites = Py_NewRef(sites);
        self->user_kind = Py_NewRef(user_kind);
    }
    return (PyObject *)self;
}

/* Names, docs and introspection come from the base method, as the Python wrapper's do not
 * (for both compiled methods: their StandIn head). */
static PyObject *
stand_in_base_attr(StandIn *self, void *name)
{
    return PyObject_GetAttrString(self->base, (const char *)name);
}

static PyGetSetDef stand_in_getset[] = {
    {"__name__", (getter)stand_in_base_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)stand_in_base_attr, NULL, NULL, "__qualname__"},
    {"__doc__", (getter)stand_in_base_attr, NULL, NULL, "__doc__"},
    {"__text_signature__", (getter)stand_in_base_attr, NULL, NULL, "__text_signature__"},
    {NULL},
};

static PyMemberDef stand_in_members[] = {
    {"__wrapped__", T_OBJECT_, offsetof(StandIn, base), READONLY_, "sqlite3's own method"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(StandIn, vectorcall), READONLY_},
    {"twin", T_OBJECT_, offsetof(StandIn, twin), READONLY_,
     "the Python wrapper, which makes the calls this one does not"},
    {NULL},
};

static PyObject *
rm_repr(RecordedMethod *self)
{
    return PyUnicode_FromFormat("<recorded method %R>", self->base);
}

static PyTypeObject RecordedMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sqlite_lockprobe.probe._speedups.RecordedMethod",
    .tp_doc = "An instrumented execute/executemany/executescript/commit/rollback, recorded "
              "in C; calls it does not make itself go to its Python twin.",
    .tp_basicsize = sizeof(RecordedMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = rm_new,
    .tp_dealloc = (destructor)rm_dealloc,
    .tp_traverse = (traverseproc)rm_traverse,
    .tp_clear = (inquiry)rm_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(RecordedMethod, vectorcall),
    .tp_descr_get = stand_in_descr_get,
    .tp_getset = stand_in_getset,
    .tp_members = stand_in_members,
    .tp_repr = (reprfunc)rm_repr,
};

/* ------------------------------------------------------------------- CursorMethod */

/* The instrumented connection's `cursor`, compiled: the twin of traced.py's Python `cursor`
 * for the calls programs make all the time, `cursor()` and `cursor(factory=Known)` (Django
 * makes one per query, and Python 3.10's Connection.execute one per call). It hands
 * sqlite3's own method the instrumented class of the factory when one is made already; any
 * other call (another shape, a connection not instrumented, a factory seen for the first time
 * or not a class) goes to the Python `cursor`, which decides as before. A Python method with
 * `*args, **kwargs` cost about 4,000 instructions a call on Django's ORM loop. */

typedef struct {
    STAND_IN_HEAD             /* twin: the Python cursor(); base: sqlite3's cursor() */
    PyObject *classes;        /* the tracer's instrumented cursor class per factory class */
    PyObject *default_class;  /* the instrumented class of sqlite3.Cursor */
    SlotMap conn_map;
} CursorMethod;

static PyObject *s_factory;

static PyObject *
cm_vectorcall(CursorMethod *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *factory;
    if (nargs == 1 && nkw == 0) {
        factory = NULL;
    }
    else if (nargs == 2 && nkw == 0) {
        factory = args[1];
    }
    else if (nargs == 1 && nkw == 1 && PyTuple_GET_ITEM(kwnames, 0) == s_factory) {
        factory = args[1];  /* the keyword, interned as every identifier in code is */
    }
    else {
        return delegate(self->twin, args, nargsf, kwnames);
    }
    PyObject *conn = args[0];
    slotmap_use(&self->conn_map, Py_TYPE(conn), conn_names, 1, 0);
    PyObject *state = slot_get(&self->conn_map, conn, CONN_LOCKPROBE, s_lockprobe);
    if (state == NULL) {
        PyErr_Clear();
        return delegate(self->twin, args, nargsf, kwnames);
    }
    int instrumented = state != Py_None;
    Py_DECREF(state);
    PyObject *known = self->default_class;
    if (factory != NULL) {
        known = PyDict_GetItemWithError(self->classes, factory);  /* borrowed */
        if (known == NULL) {
            PyErr_Clear();  /* not hashable, or not seen yet */
        }
    }
    if (!instrumented || known == NULL) {
        return delegate(self->twin, args, nargsf, kwnames);
    }
    PyObject *call[] = {conn, known};
    return PyObject_Vectorcall(self->base, call, 2, NULL);
}

static int
cm_traverse(CursorMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->twin);
    Py_VISIT(self->base);
    Py_VISIT(self->classes);
    Py_VISIT(self->default_class);
    Py_VISIT(self->conn_map.type);
    return 0;
}

static int
cm_clear(CursorMethod *self)
{
    Py_CLEAR(self->twin);
    Py_CLEAR(self->base);
    Py_CLEAR(self->classes);
    Py_CLEAR(self->default_class);
    Py_CLEAR(self->conn_map.type);
    return 0;
}

static void
cm_dealloc(CursorMethod *self)
{
    PyObject_GC_UnTrack(self);
    cm_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
cm_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"twin", "base", "classes", "default_class", NULL};
    PyObject *twin, *base, *classes, *default_class;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!O:CursorMethod", names, &twin, &base,
                                     &PyDict_Type, &classes, &default_class)) {
        return NULL;
    }
    CursorMethod *self = (CursorMethod *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)cm_vectorcall;
    self->twin = Py_NewRef(twin);
    self->base = Py_NewRef(base);
    self->classes = Py_NewRef(classes);
    self->default_class = Py_NewRef(default_class);
    return (PyObject *)self;
}

static PyObject *
cm_repr(CursorMethod *self)
{
    return PyUnicode_FromFormat("<instrumented method %R>", self->base);
}

static PyTypeObject CursorMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sqlite_lockprobe.probe._speedups.CursorMethod",
    .tp_doc = "An instrumented connection's cursor(): the instrumented cursor class of a "
              "known factory, in C; other calls go to its Python twin.",
    .tp_basicsize = sizeof(CursorMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = cm_new,
    .tp_dealloc = (destructor)cm_dealloc,
    .tp_traverse = (traverseproc)cm_traverse,
    .tp_clear = (inquiry)cm_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CursorMethod, vectorcall),
    .tp_descr_get = stand_in_descr_get,
    .tp_getset = stand_in_getset,
    .tp_members = stand_in_members,
    .tp_repr = (reprfunc)cm_repr,
};

/* ------------------------------------------------------------------------- the module */

static PyObject *
speedups_monotonic_ns(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(monotonic_ns());
}

static PyMethodDef speedups_methods[] = {
    {"monotonic_ns", speedups_monotonic_ns, METH_NOARGS,
     "The clock the records are timed with (time.monotonic_ns()'s)."},
    {"pack_records", pack_records, METH_O,
     "A RecordBuffer's records as one packed chunk payload (EventFile.pack)."},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sqlite_lockprobe.probe._speedups",
    .m_doc = "The trace probe's per-call record, compiled (optional: traced.py has the "
             "Python twin).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

static int
intern(PyObject **target, const char *text)
{
    *target = PyUnicode_InternFromString(text);
    return *target == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern(&s_lockprobe, "_lockprobe") < 0 || intern(&s_connection, "connection") < 0 ||
        intern(&s_in_transaction, "in_transaction") < 0 || intern(&s_active, "active") < 0 ||
        intern(&s_statements, "statements") < 0 || intern(&s_probe, "probe") < 0 ||
        intern(&s_ident, "ident") < 0 || intern(&s_key, "key") < 0 ||
        intern(&s_in_txn, "in_txn") < 0 || intern(&s_site, "site") < 0 ||
        intern(&s_folded, "folded") < 0 || intern(&s_busy_unclaimed, "busy_unclaimed") < 0 ||
        intern(&s_recording, "_recording") < 0 ||
        intern(&s_recording_property, "recording") < 0 ||
        intern(&s_get_running_loop, "_get_running_loop") < 0 ||
        intern(&s_key_method, "_key") < 0 || intern(&s_site_method, "_site") < 0 ||
        intern(&s_append, "append") < 0 || intern(&s_pack, "pack") < 0 ||
        intern(&s_factory, "factory") < 0) {
        return NULL;
    }
    conn_names[CONN_LOCKPROBE] = s_lockprobe;
    conn_names[CONN_IN_TRANSACTION] = s_in_transaction;
    cursor_names[CURSOR_CONNECTION] = s_connection;
    state_names[STATE_ACTIVE] = s_active;
    state_names[STATE_STATEMENTS] = s_statements;
    state_names[STATE_PROBE] = s_probe;
    state_names[STATE_IDENT] = s_ident;
    state_names[STATE_KEY] = s_key;
    state_names[STATE_IN_TXN] = s_in_txn;
    state_names[STATE_SITE] = s_site;
    state_names[STATE_FOLDED] = s_folded;
    probe_names[PROBE_BUSY_UNCLAIMED] = s_busy_unclaimed;
    tracer_names[TRACER_RECORDING] = s_recording;
    tracer_names[TRACER_GET_RUNNING_LOOP] = s_get_running_loop;
    PyObject *list = PyList_New(0);
    PyObject *append = list ? PyObject_GetAttrString(list, "append") : NULL;
    Py_XDECREF(list);
    if (append == NULL) {
        return NULL;
    }
    list_append_function = PyCFunction_Check(append) ? PyCFunction_GET_FUNCTION(append) : NULL;
    Py_DECREF(append);
    zero = PyLong_FromLong(0);
    no_loop = (PyObject *)Py_TYPE(Py_None);
    if (zero == NULL || PyType_Ready(&RecordedMethodType) < 0 ||
        PyType_Ready(&StatementListType) < 0 || PyType_Ready(&RecordBufferType) < 0 ||
        PyType_Ready(&CursorMethodType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&RecordedMethodType);
    if (PyModule_AddObject(module, "RecordedMethod", (PyObject *)&RecordedMethodType) < 0) {
        Py_DECREF(&RecordedMethodType);
        Py_DECREF(module);
        return NULL;
    }
    pack_function = PyObject_GetAttrString(module, "pack_records");
    if (pack_function == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&CursorMethodType);
    if (PyModule_AddObject(module, "CursorMethod", (PyObject *)&CursorMethodType) < 0) {
        Py_DECREF(&CursorMethodType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&StatementListType);
    if (PyModule_AddObject(module, "StatementList", (PyObject *)&StatementListType) < 0) {
        Py_DECREF(&StatementListType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
