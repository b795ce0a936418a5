/* The native fast path of prepare: a JSON reader for rollout lines, in C.
 *
 * It does, per line, what `scan.py` and `chat.py` do in Python (typed decode, usability checks,
 * context key, response identity and length) and, per pair, what `writer.py` does (re-read both
 * lines, convert them, write the pair line with its extra fields in orjson's exact bytes). It is
 * a fast path only: whenever a line is anything but plainly valid and usable (a parse error, a
 * wrong type, a duplicate key, an escaped key, a reject reason, a number it would not convert
 * exactly, ...) it hands the line back to the Python path, which decides. So the Python code
 * stays the definition of what prepare does, and `tests/unit/test_native.py` checks that both
 * agree on every line this path accepts.
 *
 * Built by setup.py as an optional extension: without a C compiler, prepare runs in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define OK 0
#define FAIL (-1)  /* hand the line to the Python path */
#define NOMEM (-2)
#define MAX_DEPTH 64

/* -- growable arrays ------------------------------------------------------------------------ */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return OK;
    size_t cap2 = *cap ? *cap * 2 : 64;
    while (cap2 < need) cap2 *= 2;
    void *q = realloc(*p, cap2 * size);
    if (!q) return NOMEM;
    *p = q;
    *cap = cap2;
    return OK;
}

static int put(buf_t *b, const void *s, size_t n) {
    if (grow((void **)&b->p, &b->cap, b->n + n, 1)) return NOMEM;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return OK;
}

#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

/* -- XXH64 (the xxHash specification), the hash `grouping.py` uses through `xxhash` ---------- */
static const uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL,
                      P3 = 0x165667B19E3779F9ULL, P4 = 0x85EBCA77C2B2AE63ULL,
                      P5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
static inline uint64_t xmerge(uint64_t acc, uint64_t v) { return (acc ^ xround(0, v)) * P1 + P4; }

static uint64_t xxh64(const void *data, size_t len, uint64_t seed) {
    const uint8_t *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        do {
            v1 = xround(v1, rd64(p)); v2 = xround(v2, rd64(p + 8));
            v3 = xround(v3, rd64(p + 16)); v4 = xround(v4, rd64(p + 24));
            p += 32;
        } while (p + 32 <= end);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = xmerge(h, v1); h = xmerge(h, v2); h = xmerge(h, v3); h = xmerge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    for (; p + 8 <= end; p += 8) h = rotl(h ^ xround(0, rd64(p)), 27) * P1 + P4;
    if (p + 4 <= end) { h = rotl(h ^ ((uint64_t)rd32(p) * P1), 23) * P2 + P3; p += 4; }
    for (; p < end; p++) h = rotl(h ^ (*p * P5), 11) * P1;
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

/* -- JSON strings ----------------------------------------------------------------------------- */
typedef struct {
    const uint8_t *s;  /* the characters between the quotes, as written */
    uint32_t n;
    uint8_t esc;       /* holds backslash escapes */
    uint8_t set;       /* the key was present */
    uint8_t null;      /* ... with the value null */
    uint8_t ascii;     /* only ASCII bytes (so one character per byte) */
} jstr;

#define TRUTHY(j) ((j).set && !(j).null && (j).n > 0)  /* Python: a non-empty str */

static int hex4(const uint8_t *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the strict UTF-8 sequence at p (no overlongs, surrogates or > U+10FFFF), 0 if bad. */
static int utf8_len(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    if (c >= 0xC2 && c <= 0xDF) return end - p >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)) return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)) return 0;
        return 4;
    }
    return 0;
}

/* Decode one character of a string's content at *pp (already validated); returns its code point. */
static uint32_t next_cp(const uint8_t **pp) {
    const uint8_t *p = *pp;
    uint32_t cp;
    if (*p == '\\') {
        switch (p[1]) {
            case 'b': cp = 8; break;
            case 'f': cp = 12; break;
            case 'n': cp = 10; break;
            case 'r': cp = 13; break;
            case 't': cp = 9; break;
            case 'u':
                cp = (uint32_t)hex4(p + 2);
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)hex4(p + 8) - 0xDC00);
                    *pp = p + 12;
                    return cp;
                }
                *pp = p + 6;
                return cp;
            default: cp = p[1]; break; /* " \ / */
        }
        *pp = p + 2;
        return cp;
    }
    if (*p < 0x80) { *pp = p + 1; return *p; }
    if (*p < 0xE0) { *pp = p + 2; return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F); }
    if (*p < 0xF0) {
        *pp = p + 3;
        return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *pp = p + 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) |
           ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

/* Python's str.isspace(), which str.strip() removes. */
static int is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int utf8_put(buf_t *b, uint32_t cp) {
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (uint8_t)cp; n = 1; }
    else if (cp < 0x800) { u[0] = 0xC0 | (cp >> 6); u[1] = 0x80 | (cp & 0x3F); n = 2; }
    else if (cp < 0x10000) {
        u[0] = 0xE0 | (cp >> 12); u[1] = 0x80 | ((cp >> 6) & 0x3F); u[2] = 0x80 | (cp & 0x3F); n = 3;
    } else {
        u[0] = 0xF0 | (cp >> 18); u[1] = 0x80 | ((cp >> 12) & 0x3F);
        u[2] = 0x80 | ((cp >> 6) & 0x3F); u[3] = 0x80 | (cp & 0x3F); n = 4;
    }
    return put(b, u, n);
}

/* A code point as orjson writes it inside a string: ", \ and control characters escaped. */
static int put_json_cp(buf_t *b, uint32_t cp) {
    static const char hex[] = "0123456789abcdef";
    switch (cp) {
        case '"': return PUTS(b, "\\\"");
        case '\\': return PUTS(b, "\\\\");
        case 8: return PUTS(b, "\\b");
        case 9: return PUTS(b, "\\t");
        case 10: return PUTS(b, "\\n");
        case 12: return PUTS(b, "\\f");
        case 13: return PUTS(b, "\\r");
        default:
            if (cp < 0x20) {
                char u[6] = {'\\', 'u', '0', '0', hex[cp >> 4], hex[cp & 15]};
                return put(b, u, 6);
            }
            return utf8_put(b, cp);
    }
}

/* The string's characters: the plain runs as they are, each escape decoded and handed to
 * `put_cp` (the raw bytes when the string has no escape: a valid raw string needs none). */
static int put_chars(buf_t *b, jstr j, int (*put_cp)(buf_t *, uint32_t)) {
    if (!j.esc) return put(b, j.s, j.n);
    const uint8_t *p = j.s, *end = j.s + j.n;
    while (p < end) {
        const uint8_t *q = p;
        while (q < end && *q != '\\') q++;
        if (put(b, p, q - p)) return NOMEM;
        if (q == end) break;
        p = q;
        if (put_cp(b, next_cp(&p))) return NOMEM;
    }
    return OK;
}

/* The string's characters as UTF-8 (what Python's str.encode() gives). */
static int unescape(buf_t *b, jstr j) { return put_chars(b, j, utf8_put); }

/* The string's characters, escaped as orjson escapes them. */
static int emit_chars(buf_t *b, jstr j) { return put_chars(b, j, put_json_cp); }

/* Characters (code points: Python's len()) and whether any is not whitespace. */
static void measure(jstr j, uint64_t *chars, int *visible) {
    const uint8_t *p = j.s, *end = j.s + j.n;
    if (!j.esc && j.ascii) {
        *chars += j.n;
        for (; p < end && !*visible; p++)
            if (!is_space(*p)) *visible = 1;
        return;
    }
    if (!j.esc) {
        for (; p < end; p++) {
            if ((*p & 0xC0) != 0x80) (*chars)++;
            if (!*visible && *p < 0x80 && !is_space(*p)) *visible = 1;
        }
        if (!*visible) {  /* only whitespace or non-ASCII: decide character by character */
            for (p = j.s; p < end && !*visible;)
                if (!is_space(next_cp(&p))) *visible = 1;
        }
        return;
    }
    while (p < end) {
        uint32_t cp = next_cp(&p);
        (*chars)++;
        if (!*visible && !is_space(cp)) *visible = 1;
    }
}

/* -- the reader -------------------------------------------------------------------------------- */
typedef struct {
    const uint8_t *p, *end;
    int depth;
} cur_t;

static inline void ws(cur_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

/* Whether any of 8 bytes is '"', '\\', a control character or not ASCII: what stops the plain
 * copy of a string's characters (SWAR: all 8 tested at once). */
static inline uint64_t special8(uint64_t v) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t quote = v ^ (ones * '"'), backslash = v ^ (ones * '\\');
    uint64_t control = (v - ones * 0x20) & ~v;                 /* a byte < 0x20 */
    uint64_t zeros = ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash);
    return (control | zeros | v) & high;                       /* v: a byte >= 0x80 */
}

/* Past the plain characters at p: 16 bytes at a time with SSE2 (x86-64), else 8 with SWAR. */
static inline const uint8_t *skip_plain(const uint8_t *p, const uint8_t *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed: bytes >= 0x80 are negative, so "< 0x20" also finds non-ASCII */
        __m128i special = _mm_or_si128(_mm_cmplt_epi8(v, space),
                                       _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
        int mask = _mm_movemask_epi8(special);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (end - p >= 8 && !special8(rd64(p))) p += 8;
    return p;
}

static int parse_string(cur_t *c, jstr *out) {
    const uint8_t *p = c->p + 1, *end = c->end, *start = p;
    int esc = 0, ascii = 1;
    for (;;) {
        p = skip_plain(p, end);
        if (p >= end) return FAIL;
        uint8_t ch = *p;
        if (ch == '"') break;
        if (ch == '\\') {
            esc = 1;
            if (p + 1 >= end) return FAIL;
            uint8_t e = p[1];
            if (e == 'u') {
                if (end - p < 6) return FAIL;
                int cp = hex4(p + 2);
                if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return FAIL;
                p += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {  /* a high surrogate needs its low half */
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return FAIL;
                    int lo = hex4(p + 2);
                    if (lo < 0xDC00 || lo > 0xDFFF) return FAIL;
                    p += 6;
                }
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return FAIL;
            }
        } else if (ch < 0x20) {
            return FAIL;
        } else if (ch < 0x80) {
            p++;
        } else {
            int n = utf8_len(p, end);
            if (!n) return FAIL;
            p += n;
            ascii = 0;
        }
    }
    if (p - start > UINT32_MAX) return FAIL;
    out->s = start;
    out->n = (uint32_t)(p - start);
    out->esc = (uint8_t)esc;
    out->ascii = (uint8_t)ascii;
    out->set = 1;
    out->null = 0;
    c->p = p + 1;
    return OK;
}

static int literal(cur_t *c, const char *word, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n)) return FAIL;
    c->p += n;
    return OK;
}

static inline int is_digit(uint8_t ch) { return ch >= '0' && ch <= '9'; }

/* A JSON number; its text in [*s, c->p) and whether it is an integer literal. */
static int parse_number(cur_t *c, const uint8_t **s, int *is_int) {
    const uint8_t *p = c->p, *end = c->end;
    *s = p;
    *is_int = 1;
    if (p < end && *p == '-') p++;
    if (p >= end) return FAIL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < end && is_digit(*p)) p++;
    else return FAIL;
    if (p < end && *p == '.') {
        *is_int = 0;
        if (++p >= end || !is_digit(*p)) return FAIL;
        while (p < end && is_digit(*p)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        if (++p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || !is_digit(*p)) return FAIL;
        while (p < end && is_digit(*p)) p++;
    }
    c->p = p;
    return OK;
}

static int skip_value(cur_t *c);

/* Objects and arrays: `*count` counts members; returns 1 with the cursor on the next member's
 * value (objects: after its key, in `key`), 0 at the end, FAIL on bad syntax. */
static int open_container(cur_t *c, uint8_t bracket) {
    if (c->p >= c->end || *c->p != bracket || ++c->depth > MAX_DEPTH) return FAIL;
    c->p++;
    return OK;
}

static int next_member(cur_t *c, int *count, uint8_t close) {
    ws(c);
    if (c->p >= c->end) return FAIL;
    if (*c->p == close) { c->p++; c->depth--; return 0; }
    if (*count) {
        if (*c->p != ',') return FAIL;
        c->p++;
        ws(c);
    }
    (*count)++;
    return 1;
}

static int next_key(cur_t *c, int *count, jstr *key) {
    int more = next_member(c, count, '}');
    if (more != 1) return more;
    if (c->p >= c->end || *c->p != '"' || parse_string(c, key)) return FAIL;
    ws(c);
    if (c->p >= c->end || *c->p != ':') return FAIL;
    c->p++;
    ws(c);
    return 1;
}

/* next_key in an object whose keys are matched against field names: an escaped key might spell
 * one of them, so it hands the line back. */
static int next_field(cur_t *c, int *count, jstr *key) {
    int more = next_key(c, count, key);
    return more == 1 && key->esc ? FAIL : more;
}

static int next_item(cur_t *c, int *count) {
    int more = next_member(c, count, ']');
    if (more == 1 && c->p < c->end && *c->p == ']') return FAIL;  /* [1,] */
    return more;
}

static int skip_value(cur_t *c) {
    ws(c);
    if (c->p >= c->end) return FAIL;
    int count = 0, more;
    jstr tmp;
    const uint8_t *s;
    switch (*c->p) {
        case '"': return parse_string(c, &tmp);
        case 't': return literal(c, "true", 4);
        case 'f': return literal(c, "false", 5);
        case 'n': return literal(c, "null", 4);
        case '{':
            if (open_container(c, '{')) return FAIL;
            while ((more = next_key(c, &count, &tmp)) == 1)
                if (skip_value(c)) return FAIL;
            return more;
        case '[':
            if (open_container(c, '[')) return FAIL;
            while ((more = next_item(c, &count)) == 1)
                if (skip_value(c)) return FAIL;
            return more;
        default: return parse_number(c, &s, &more);
    }
}

static inline int is_null(cur_t *c) { return c->p < c->end && *c->p == 'n'; }

static inline int key_is(jstr k, const char *name, size_t n) {
    return k.n == n && !memcmp(k.s, name, n);
}
#define KEY(k, lit) key_is((k), (lit), sizeof(lit) - 1)

/* `X | None` for a struct X: 0 when it was null, 1 with the object opened; a repeated key hands
 * the line back. */
static int open_optional(cur_t *c, uint8_t *set) {
    if (*set) return FAIL;
    *set = 1;
    if (is_null(c)) return literal(c, "null", 4);
    return open_container(c, '{') ? FAIL : 1;
}

/* str | None (msgspec's `str | None`); a repeated key hands the line back. */
static int str_or_null(cur_t *c, jstr *out) {
    if (out->set) return FAIL;
    if (is_null(c)) {
        if (literal(c, "null", 4)) return FAIL;
        out->set = out->null = 1;
        return OK;
    }
    if (c->p >= c->end || *c->p != '"') return FAIL;
    return parse_string(c, out);
}

/* -- rollout items --------------------------------------------------------------------------- */
typedef struct { jstr type, text; } part_t;

enum { C_NONE = 0, C_STR, C_PARTS };
typedef struct {
    uint8_t kind, set;
    jstr str;
    uint32_t first, count;  /* parts */
} content_t;

typedef struct {
    jstr type, role, name, arguments, call_id;
    content_t content, output;
    uint8_t summary_set;
} item_t;

typedef struct { uint32_t first, count; uint8_t present; } list_t;

/* Chat messages as `chat.to_messages` builds them; texts are lists of string segments. */
enum { R_SYSTEM = 0, R_DEVELOPER, R_USER, R_ASSISTANT, R_TOOL };
static const char *ROLE_NAMES[] = {"system", "developer", "user", "assistant", "tool"};

typedef struct { jstr s; uint8_t newline; } seg_t;  /* a string, or the "\n" of a join */
typedef struct { jstr id, name, arguments; } call_t;
typedef struct {
    uint8_t role;
    uint32_t seg0, nseg, call0, ncall;
    jstr tool_call_id;
} msg_t;

typedef struct {
    part_t *parts; size_t nparts, cap_parts;
    item_t *items; size_t nitems, cap_items;
    seg_t *segs; size_t nsegs, cap_segs;
    call_t *calls; size_t ncalls, cap_calls;
    msg_t *msgs; size_t nmsgs, cap_msgs;
    buf_t out, tmp;
    uint8_t developer_role;
} ctx_t;

static void ctx_reset(ctx_t *x) {
    x->nparts = x->nitems = x->nsegs = x->ncalls = x->nmsgs = 0;
    x->out.n = x->tmp.n = 0;
}

static void ctx_free(ctx_t *x) {
    free(x->parts); free(x->items); free(x->segs); free(x->calls); free(x->msgs);
    free(x->out.p); free(x->tmp.p);
}

static int parse_part(ctx_t *x, cur_t *c) {
    part_t part;
    memset(&part, 0, sizeof part);
    int count = 0, more;
    jstr key;
    if (open_container(c, '{')) return FAIL;
    while ((more = next_field(c, &count, &key)) == 1) {
        int rc = KEY(key, "type") ? str_or_null(c, &part.type)
               : KEY(key, "text") ? str_or_null(c, &part.text) : skip_value(c);
        if (rc) return rc;
    }
    if (more) return FAIL;
    if (grow((void **)&x->parts, &x->cap_parts, x->nparts + 1, sizeof(part_t))) return NOMEM;
    x->parts[x->nparts++] = part;
    return OK;
}

static int parse_parts(ctx_t *x, cur_t *c, uint32_t *first, uint32_t *count_out) {
    int count = 0, more, rc;
    *first = (uint32_t)x->nparts;
    if (open_container(c, '[')) return FAIL;
    while ((more = next_item(c, &count)) == 1)
        if ((rc = parse_part(x, c))) return rc;
    if (more) return FAIL;
    *count_out = (uint32_t)(x->nparts - *first);
    return OK;
}

/* `Content = str | list[Part] | None` */
static int parse_content(ctx_t *x, cur_t *c, content_t *out) {
    if (out->set) return FAIL;
    out->set = 1;
    if (c->p >= c->end) return FAIL;
    if (*c->p == '"') { out->kind = C_STR; return parse_string(c, &out->str); }
    if (*c->p == '[') { out->kind = C_PARTS; return parse_parts(x, c, &out->first, &out->count); }
    out->kind = C_NONE;
    return literal(c, "null", 4);
}

static int parse_item(ctx_t *x, cur_t *c) {
    item_t it;
    memset(&it, 0, sizeof it);
    int count = 0, more, rc;
    jstr key;
    if (open_container(c, '{')) return FAIL;
    while ((more = next_field(c, &count, &key)) == 1) {
        if (KEY(key, "type")) rc = str_or_null(c, &it.type);
        else if (KEY(key, "role")) rc = str_or_null(c, &it.role);
        else if (KEY(key, "name")) rc = str_or_null(c, &it.name);
        else if (KEY(key, "arguments")) rc = str_or_null(c, &it.arguments);
        else if (KEY(key, "call_id")) rc = str_or_null(c, &it.call_id);
        else if (KEY(key, "content")) rc = parse_content(x, c, &it.content);
        else if (KEY(key, "output")) rc = parse_content(x, c, &it.output);
        else if (KEY(key, "summary")) {
            uint32_t f, n;
            if (it.summary_set) return FAIL;
            it.summary_set = 1;
            rc = is_null(c) ? literal(c, "null", 4) : parse_parts(x, c, &f, &n);
        } else rc = skip_value(c);
        if (rc) return rc;
    }
    if (more) return FAIL;
    if (grow((void **)&x->items, &x->cap_items, x->nitems + 1, sizeof(item_t))) return NOMEM;
    x->items[x->nitems++] = it;
    return OK;
}

/* `list[Item] | None` */
static int parse_items(ctx_t *x, cur_t *c, list_t *out) {
    if (out->present) return FAIL;
    out->present = 1;
    if (is_null(c)) { out->present = 2; return literal(c, "null", 4); }  /* 2: null */
    int count = 0, more, rc;
    out->first = (uint32_t)x->nitems;
    if (open_container(c, '[')) return FAIL;
    while ((more = next_item(c, &count)) == 1)
        if ((rc = parse_item(x, c))) return rc;
    if (more) return FAIL;
    out->count = (uint32_t)(x->nitems - out->first);
    return OK;
}

/* -- one rollout --------------------------------------------------------------------------- */
enum { IN_NONE = 0, IN_STR, IN_LIST };

typedef struct {
    const uint8_t *raw_input; size_t raw_input_n;
    uint8_t input_kind; jstr input_str; list_t input_items;
    jstr instructions;
    uint8_t params_set, input_set, response_set;
    list_t response_output, output;
    uint8_t reward_set; double reward;
    uint8_t mask_set; uint8_t mask;
    uint8_t task_set, task_null; int64_t task_index;
    uint8_t rollout_set;
    uint8_t agent_set; jstr agent_name;
} row_t;

static int parse_int(cur_t *c, int64_t *value) {
    const uint8_t *s;
    int is_int;
    if (parse_number(c, &s, &is_int) || !is_int) return FAIL;
    size_t n = c->p - s;
    if (n > 18) return FAIL;  /* beyond int64 or close to it: the Python path decides */
    char tmp[20];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    *value = strtoll(tmp, NULL, 10);
    return OK;
}

static int parse_int_or_null(cur_t *c, uint8_t *set, uint8_t *null, int64_t *value) {
    if (*set) return FAIL;
    *set = 1;
    if (is_null(c)) { *null = 1; return literal(c, "null", 4); }
    return parse_int(c, value);
}

static int parse_params(ctx_t *x, cur_t *c, row_t *r) {
    int count = 0, more, rc;
    jstr key;
    if (r->params_set) return FAIL;
    r->params_set = 1;
    if (open_container(c, '{')) return FAIL;  /* Params is not optional */
    while ((more = next_field(c, &count, &key)) == 1) {
        if (KEY(key, "input")) {
            if (r->input_set) return FAIL;
            r->input_set = 1;
            r->raw_input = c->p;
            if (c->p >= c->end) return FAIL;
            if (*c->p == '"') { r->input_kind = IN_STR; rc = parse_string(c, &r->input_str); }
            else if (*c->p == '[') { r->input_kind = IN_LIST; rc = parse_items(x, c, &r->input_items); }
            else { r->input_kind = IN_NONE; rc = literal(c, "null", 4); }
            r->raw_input_n = c->p - r->raw_input;
        } else if (KEY(key, "instructions")) {
            rc = str_or_null(c, &r->instructions);
        } else rc = skip_value(c);
        if (rc) return rc;
    }
    return more ? FAIL : OK;
}

static int parse_response(ctx_t *x, cur_t *c, row_t *r) {
    int count = 0, more, rc = open_optional(c, &r->response_set);
    jstr key;
    if (rc != 1) return rc;
    while ((more = next_field(c, &count, &key)) == 1)
        if ((rc = KEY(key, "output") ? parse_items(x, c, &r->response_output) : skip_value(c))) return rc;
    return more ? FAIL : OK;
}

static int parse_agent(cur_t *c, row_t *r) {
    int count = 0, more, rc = open_optional(c, &r->agent_set);
    jstr key;
    if (rc != 1) return rc;
    while ((more = next_field(c, &count, &key)) == 1)
        if ((rc = KEY(key, "name") ? str_or_null(c, &r->agent_name) : skip_value(c))) return rc;
    return more ? FAIL : OK;
}

static int parse_reward(cur_t *c, row_t *r) {
    const uint8_t *s;
    int is_int;
    if (r->reward_set) return FAIL;
    r->reward_set = 1;
    if (is_null(c) || parse_number(c, &s, &is_int)) return FAIL;  /* null: rejected in Python */
    size_t n = c->p - s;
    if ((is_int && n > 15) || n > 60) return FAIL;  /* exact conversion only */
    char tmp[64], *stop;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    r->reward = strtod(tmp, &stop);
    /* all of it read (a locale with a decimal comma would stop at the '.'), and finite */
    return stop == tmp + n && isfinite(r->reward) ? OK : FAIL;
}

static int parse_row(ctx_t *x, const uint8_t *line, size_t n, row_t *r) {
    cur_t cur = {line, line + n, 0}, *c = &cur;
    int count = 0, more, rc;
    jstr key;
    memset(r, 0, sizeof *r);
    ws(c);
    if (open_container(c, '{')) return FAIL;
    while ((more = next_field(c, &count, &key)) == 1) {
        if (KEY(key, "responses_create_params")) rc = parse_params(x, c, r);
        else if (KEY(key, "response")) rc = parse_response(x, c, r);
        else if (KEY(key, "output")) rc = parse_items(x, c, &r->output);
        else if (KEY(key, "reward")) rc = parse_reward(c, r);
        else if (KEY(key, "mask_sample")) {
            if (r->mask_set) return FAIL;
            r->mask_set = 1;
            if (c->p < c->end && *c->p == 't') { rc = literal(c, "true", 4); r->mask = 1; }
            else if (c->p < c->end && *c->p == 'f') rc = literal(c, "false", 5);
            else rc = literal(c, "null", 4);
        } else if (KEY(key, "_ng_task_index")) {
            rc = parse_int_or_null(c, &r->task_set, &r->task_null, &r->task_index);
        } else if (KEY(key, "_ng_rollout_index")) {
            uint8_t set = r->rollout_set, null = 0;
            int64_t unused;
            rc = parse_int_or_null(c, &set, &null, &unused);
            r->rollout_set = 1;
        } else if (KEY(key, "agent_ref")) rc = parse_agent(c, r);
        else rc = skip_value(c);
        if (rc) return rc;
    }
    if (more) return FAIL;
    ws(c);
    if (c->p != c->end) return FAIL;  /* trailing bytes */
    if (!r->params_set || !r->reward_set || r->mask) return FAIL;
    if (!r->input_set) { r->raw_input = (const uint8_t *)"null"; r->raw_input_n = 4; }
    if (!r->task_set) r->task_null = 1;
    return OK;
}

/* -- chat.py: items -> messages ------------------------------------------------------------- */
enum { K_NONE = 0, K_MESSAGE, K_CALL, K_CALL_OUTPUT, K_REASONING, K_OTHER };

static int kind_of(const item_t *it) {  /* chat._kind */
    if (TRUTHY(it->type)) {
        if (it->type.esc) return FAIL;
        if (KEY(it->type, "message")) return K_MESSAGE;
        if (KEY(it->type, "function_call")) return K_CALL;
        if (KEY(it->type, "function_call_output")) return K_CALL_OUTPUT;
        if (KEY(it->type, "reasoning")) return K_REASONING;
        return K_OTHER;
    }
    return TRUTHY(it->role) ? K_MESSAGE : K_NONE;
}

static int role_of(const item_t *it) {  /* chat._role; an unknown role is a reject */
    if (!TRUTHY(it->role)) return R_USER;
    if (it->role.esc) return FAIL;
    if (KEY(it->role, "system")) return R_SYSTEM;
    if (KEY(it->role, "developer")) return R_DEVELOPER;
    if (KEY(it->role, "user")) return R_USER;
    if (KEY(it->role, "assistant")) return R_ASSISTANT;
    return FAIL;
}

static int text_part(const part_t *p) {  /* chat.TEXT_PARTS */
    if (!p->type.set || p->type.null) return 1;
    if (p->type.esc) return 0;
    return KEY(p->type, "input_text") || KEY(p->type, "output_text") || KEY(p->type, "text") ||
           KEY(p->type, "summary_text");
}

/* chat.text_of: checks the parts; says whether the text is non-empty. */
static int content_check(ctx_t *x, const content_t *ct, int *nonempty) {
    *nonempty = 0;
    if (ct->kind == C_STR) { *nonempty = ct->str.n > 0; return OK; }
    if (ct->kind == C_PARTS) {
        for (uint32_t i = 0; i < ct->count; i++) {
            const part_t *p = &x->parts[ct->first + i];
            if (!text_part(p)) return FAIL;
            if (p->text.set && !p->text.null && p->text.n) *nonempty = 1;
        }
    }
    return OK;
}

static int add_seg(ctx_t *x, jstr s, uint8_t newline) {
    if (grow((void **)&x->segs, &x->cap_segs, x->nsegs + 1, sizeof(seg_t))) return NOMEM;
    x->segs[x->nsegs].s = s;
    x->segs[x->nsegs].newline = newline;
    x->nsegs++;
    return OK;
}

/* Append the text of a content (empty pieces dropped; they add no characters). */
static int add_content(ctx_t *x, const content_t *ct) {
    if (ct->kind == C_STR && ct->str.n) return add_seg(x, ct->str, 0);
    if (ct->kind == C_PARTS)
        for (uint32_t i = 0; i < ct->count; i++) {
            const part_t *p = &x->parts[ct->first + i];
            if (p->text.set && !p->text.null && p->text.n && add_seg(x, p->text, 0)) return NOMEM;
        }
    return OK;
}

static msg_t *new_msg(ctx_t *x, uint8_t role) {
    if (grow((void **)&x->msgs, &x->cap_msgs, x->nmsgs + 1, sizeof(msg_t))) return NULL;
    msg_t *m = &x->msgs[x->nmsgs++];
    memset(m, 0, sizeof *m);
    m->role = role;
    m->seg0 = (uint32_t)x->nsegs;
    m->call0 = (uint32_t)x->ncalls;
    return m;
}

static const jstr EMPTY = {(const uint8_t *)"", 0, 0, 1, 0, 1};
static inline jstr or_empty(jstr j) { return TRUTHY(j) ? j : EMPTY; }

/* chat.to_messages(items, include_reasoning=False): appends to x->msgs; the messages before
 * the call are not this list's, so none of them is ever `last`. */
static int to_messages(ctx_t *x, list_t list) {
    size_t base = x->nmsgs;
    for (uint32_t i = 0; i < list.count; i++) {
        const item_t *it = &x->items[list.first + i];
        int kind = kind_of(it), rc, nonempty;
        if (kind < 0) return FAIL;
        msg_t *last = x->nmsgs > base ? &x->msgs[x->nmsgs - 1] : NULL;
        if (kind == K_MESSAGE) {
            int role = role_of(it);
            if (role < 0) return FAIL;
            if (role == R_DEVELOPER) role = x->developer_role;
            if ((rc = content_check(x, &it->content, &nonempty))) return rc;
            if (role == R_ASSISTANT && last && last->role == R_ASSISTANT && !last->ncall) {
                /* several message items of one assistant turn: "\n".join of the non-empty */
                if (last->nseg && nonempty && add_seg(x, EMPTY, 1)) return NOMEM;
            } else if (!(last = new_msg(x, (uint8_t)role))) {
                return NOMEM;
            }
            if (add_content(x, &it->content)) return NOMEM;
            last->nseg = (uint32_t)(x->nsegs - last->seg0);
        } else if (kind == K_CALL) {
            if (!TRUTHY(it->name)) return FAIL;  /* tool_call_without_name: a reject */
            if (!(last && last->role == R_ASSISTANT && (last->ncall || !last->nseg))) {
                if (!(last = new_msg(x, R_ASSISTANT))) return NOMEM;
            }
            if (grow((void **)&x->calls, &x->cap_calls, x->ncalls + 1, sizeof(call_t))) return NOMEM;
            call_t *call = &x->calls[x->ncalls++];
            call->id = or_empty(it->call_id);
            call->name = or_empty(it->name);
            call->arguments = or_empty(it->arguments);
            last->ncall++;
        } else if (kind == K_CALL_OUTPUT) {
            if ((rc = content_check(x, &it->output, &nonempty))) return rc;
            if (!(last = new_msg(x, R_TOOL))) return NOMEM;
            last->tool_call_id = or_empty(it->call_id);
            if (add_content(x, &it->output)) return NOMEM;
            last->nseg = (uint32_t)(x->nsegs - last->seg0);
        }
    }
    return OK;
}

/* -- serialising (orjson's bytes) ---------------------------------------------------------- */
static int emit_jstr(buf_t *b, jstr s) {
    return put(b, "\"", 1) || emit_chars(b, s) || put(b, "\"", 1) ? NOMEM : OK;
}

static int emit_text(ctx_t *x, buf_t *b, uint32_t seg0, uint32_t nseg) {
    if (put(b, "\"", 1)) return NOMEM;
    for (uint32_t i = 0; i < nseg; i++) {
        const seg_t *s = &x->segs[seg0 + i];
        if (s->newline ? put(b, "\\n", 2) : emit_chars(b, s->s)) return NOMEM;
    }
    return put(b, "\"", 1);
}

static void text_measure(ctx_t *x, uint32_t seg0, uint32_t nseg, uint64_t *chars, int *visible) {
    for (uint32_t i = 0; i < nseg; i++) {
        const seg_t *s = &x->segs[seg0 + i];
        if (s->newline) { (*chars)++; continue; }
        measure(s->s, chars, visible);
    }
}

static int emit_messages(ctx_t *x, buf_t *b, uint32_t first, uint32_t count) {
    if (put(b, "[", 1)) return NOMEM;
    for (uint32_t i = 0; i < count; i++) {
        const msg_t *m = &x->msgs[first + i];
        const char *role = m->role == R_DEVELOPER ? ROLE_NAMES[x->developer_role] : ROLE_NAMES[m->role];
        if ((i && put(b, ",", 1)) || PUTS(b, "{\"role\":\"") || put(b, role, strlen(role)) ||
            put(b, "\"", 1))
            return NOMEM;
        if (m->role == R_TOOL && (PUTS(b, ",\"tool_call_id\":") || emit_jstr(b, m->tool_call_id)))
            return NOMEM;
        if (PUTS(b, ",\"content\":") || emit_text(x, b, m->seg0, m->nseg)) return NOMEM;
        if (m->ncall) {
            if (PUTS(b, ",\"tool_calls\":[")) return NOMEM;
            for (uint32_t k = 0; k < m->ncall; k++) {
                const call_t *call = &x->calls[m->call0 + k];
                if ((k && put(b, ",", 1)) || PUTS(b, "{\"id\":") || emit_jstr(b, call->id) ||
                    PUTS(b, ",\"type\":\"function\",\"function\":{\"name\":") ||
                    emit_jstr(b, call->name) || PUTS(b, ",\"arguments\":") ||
                    emit_jstr(b, call->arguments) || PUTS(b, "}}"))
                    return NOMEM;
            }
            if (put(b, "]", 1)) return NOMEM;
        }
        if (put(b, "}", 1)) return NOMEM;
    }
    return put(b, "]", 1);
}

/* chat.check_context */
static int check_context(ctx_t *x, const row_t *r) {
    int turns = r->input_kind == IN_STR && r->input_str.n > 0, nonempty, rc;
    if (r->input_kind == IN_LIST) {
        for (uint32_t i = 0; i < r->input_items.count; i++) {
            const item_t *it = &x->items[r->input_items.first + i];
            int kind = kind_of(it);
            if (kind < 0) return FAIL;
            if (kind == K_MESSAGE) {
                if (role_of(it) < 0) return FAIL;
                if ((rc = content_check(x, &it->content, &nonempty))) return rc;
            } else if (kind == K_CALL_OUTPUT) {
                if ((rc = content_check(x, &it->output, &nonempty))) return rc;
            } else if (kind == K_CALL && !TRUTHY(it->name)) {
                return FAIL;  /* tool_call_without_name: a reject */
            }
            turns += kind == K_MESSAGE || kind == K_CALL || kind == K_CALL_OUTPUT;
        }
    }
    return TRUTHY(r->instructions) || turns ? OK : FAIL;
}

static int is_text_turn(const item_t *it, int *yes) {  /* chat._is_text_turn */
    if (it->type.set && !it->type.null) {
        if (it->type.esc) return FAIL;
        if (KEY(it->type, "reasoning")) { *yes = 1; return OK; }
    }
    if (it->role.set && !it->role.null && it->role.esc) return FAIL;
    int assistant = it->role.set && !it->role.null && KEY(it->role, "assistant");
    int message_type = !it->type.set || it->type.null || KEY(it->type, "message");
    *yes = assistant && message_type;
    return OK;
}

typedef struct {
    uint8_t is_text;
    uint32_t seg0, nseg;      /* is_text: the text */
    uint32_t msg0, nmsg;      /* otherwise: the messages */
} response_t;

/* scan.checked_response (after the row checks) + chat.response_of: the response, or FAIL. */
static int response_of(ctx_t *x, const row_t *r, int binary, response_t *out) {
    list_t items = r->response_output;
    if (items.present != 1) items = r->output;  /* response or its output null: legacy layout */
    uint32_t n = items.present == 1 ? items.count : 0;
    int all_text = 1, rc, yes;
    for (uint32_t i = 0; i < n && all_text; i++) {
        if ((rc = is_text_turn(&x->items[items.first + i], &yes))) return rc;
        all_text = yes;
    }
    memset(out, 0, sizeof *out);
    uint64_t chars = 0;
    int visible = 0;
    if (all_text) {
        int texts = 0, nonempty;
        out->is_text = 1;
        out->seg0 = (uint32_t)x->nsegs;
        for (uint32_t i = 0; i < n; i++) {
            const item_t *it = &x->items[items.first + i];
            if (it->type.set && !it->type.null && KEY(it->type, "reasoning")) continue;
            texts++;
            if ((rc = content_check(x, &it->content, &nonempty))) return rc;
            if (nonempty && x->nsegs > out->seg0 && add_seg(x, EMPTY, 1)) return NOMEM;
            if (add_content(x, &it->content)) return NOMEM;
        }
        out->nseg = (uint32_t)(x->nsegs - out->seg0);
        text_measure(x, out->seg0, out->nseg, &chars, &visible);
        return texts && visible ? OK : FAIL;
    }
    if (n == 0) return FAIL;
    out->msg0 = (uint32_t)x->nmsgs;
    items.count = n;
    if ((rc = to_messages(x, items))) return rc;
    while (x->nmsgs > out->msg0 && x->msgs[x->nmsgs - 1].role != R_ASSISTANT) x->nmsgs--;
    out->nmsg = (uint32_t)(x->nmsgs - out->msg0);
    if (!out->nmsg) return FAIL;
    const msg_t *last = &x->msgs[x->nmsgs - 1];
    text_measure(x, last->seg0, last->nseg, &chars, &visible);
    if (!visible && !last->ncall) return FAIL;
    if (out->nmsg == 1 && !last->ncall) {
        out->is_text = 1;
        out->seg0 = last->seg0;
        out->nseg = last->nseg;
        return OK;
    }
    return binary ? FAIL : OK;  /* trajectory_in_binary_format: a reject */
}

/* chat.response_length (in characters) */
static uint64_t response_chars(ctx_t *x, const response_t *resp) {
    uint64_t chars = 0;
    int visible = 1;
    if (resp->is_text) {
        text_measure(x, resp->seg0, resp->nseg, &chars, &visible);
        return chars;
    }
    for (uint32_t i = 0; i < resp->nmsg; i++) {
        const msg_t *m = &x->msgs[resp->msg0 + i];
        if (m->role != R_ASSISTANT) continue;
        text_measure(x, m->seg0, m->nseg, &chars, &visible);
        for (uint32_t k = 0; k < m->ncall; k++) measure(x->calls[m->call0 + k].arguments, &chars, &visible);
    }
    return chars;
}

static int emit_response(ctx_t *x, buf_t *b, const response_t *resp) {
    return resp->is_text ? emit_text(x, b, resp->seg0, resp->nseg)
                         : emit_messages(x, b, resp->msg0, resp->nmsg);
}

/* -- grouping.keys ---------------------------------------------------------------------------- */
static const uint64_t CONTEXT_SALT = 0x9E3779B97F4A7C15ULL;

static int row_keys(ctx_t *x, const row_t *r, uint16_t file, uint64_t key[3]) {
    uint64_t seed = 0;
    x->tmp.n = 0;
    if (r->instructions.set && !r->instructions.null) {
        if (unescape(&x->tmp, r->instructions)) return NOMEM;
        seed = xxh64(x->tmp.p, x->tmp.n, 0) + 1;
    }
    uint64_t a = xxh64(r->raw_input, r->raw_input_n, seed);
    uint64_t b = xxh64(r->raw_input, r->raw_input_n, seed ^ CONTEXT_SALT);
    /* head = a, b (8 bytes each, little-endian) + grouping._task_identity(...) */
    x->tmp.n = 0;
    if (put(&x->tmp, &a, 8) || put(&x->tmp, &b, 8)) return NOMEM;
    int has_agent = r->agent_name.set && !r->agent_name.null;
    if (has_agent || !r->task_null) {
        if (put(&x->tmp, "T", 1)) return NOMEM;
        if (has_agent) {
            size_t at = x->tmp.n;
            uint32_t len = 0;
            if (PUTS(&x->tmp, "\x01") || put(&x->tmp, &len, 4) || unescape(&x->tmp, r->agent_name))
                return NOMEM;
            len = (uint32_t)(x->tmp.n - at - 5);
            memcpy(x->tmp.p + at + 1, &len, 4);
        } else if (put(&x->tmp, "", 1)) return NOMEM;
        if (!r->task_null) {
            uint8_t index[9];
            memcpy(index, &r->task_index, 8);
            index[8] = r->task_index < 0 ? 0xFF : 0;
            if (PUTS(&x->tmp, "\x01") || put(&x->tmp, index, 9) || put(&x->tmp, &file, 2)) return NOMEM;
        } else if (put(&x->tmp, "", 1)) return NOMEM;
    }
    key[0] = xxh64(x->tmp.p, x->tmp.n, 1);
    key[1] = xxh64(x->tmp.p, x->tmp.n, 2);
    key[2] = a;
    return OK;
}

/* -- the Python functions ---------------------------------------------------------------------- */
#pragma pack(push, 1)
typedef struct {  /* grouping.RECORD */
    uint64_t key_hi, key_lo, context, response;
    double reward;
    uint32_t length;
    uint16_t file;
    uint32_t nbytes;
    uint64_t offset, line;
} record_t;
#pragma pack(pop)

static int scan_line(ctx_t *x, const uint8_t *line, size_t n, int binary, record_t *rec) {
    row_t r;
    response_t resp;
    int rc;
    ctx_reset(x);
    if ((rc = parse_row(x, line, n, &r))) return rc;
    if ((rc = check_context(x, &r))) return rc;
    if ((rc = response_of(x, &r, binary, &resp))) return rc;
    uint64_t key[3];
    if ((rc = row_keys(x, &r, rec->file, key))) return rc;
    if ((rc = emit_response(x, &x->out, &resp))) return rc;
    uint64_t chars = response_chars(x, &resp);
    if (chars > UINT32_MAX || n > UINT32_MAX) return FAIL;
    rec->key_hi = key[0];
    rec->key_lo = key[1];
    rec->context = key[2];
    rec->response = xxh64(x->out.p, x->out.n, 0);
    rec->reward = r.reward;
    rec->length = (uint32_t)chars;
    rec->nbytes = (uint32_t)n;
    return OK;
}

PyDoc_STRVAR(scan_doc,
"scan(data, file_index, base_offset, developer_role, binary) -> (records, lines, handed_back)\n\n"
"Every line of `data` (a chunk of whole lines starting at `base_offset` of its file): a\n"
"grouping.RECORD for each line this path accepts, as a bytearray; the number of lines; and\n"
"(line number, start, end) of each line left to the Python path. Line numbers are 1-based in\n"
"the chunk.");

static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    unsigned int file_index;
    unsigned long long base;
    int developer_is_system, binary;
    if (!PyArg_ParseTuple(args, "y*IKpp", &view, &file_index, &base, &developer_is_system, &binary))
        return NULL;
    ctx_t x;
    memset(&x, 0, sizeof x);
    x.developer_role = developer_is_system ? R_SYSTEM : R_DEVELOPER;
    buf_t records = {0};
    PyObject *handed = PyList_New(0), *result = NULL;
    const uint8_t *data = view.buf;
    size_t size = (size_t)view.len, pos = 0;
    uint64_t number = 0;
    int failed = !handed;
    while (!failed && pos < size) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t end = nl ? (size_t)(nl - data) : size, start = pos;
        pos = end + 1;
        number++;
        record_t rec;
        rec.file = (uint16_t)file_index;
        rec.offset = base + start;
        rec.line = number;
        int rc = scan_line(&x, data + start, end - start, binary, &rec);
        if (rc == OK) {
            if (put(&records, &rec, sizeof rec)) rc = NOMEM;
        } else if (rc == FAIL) {
            PyObject *t = Py_BuildValue("(Knn)", (unsigned long long)number, (Py_ssize_t)start,
                                        (Py_ssize_t)end);
            if (!t || PyList_Append(handed, t)) failed = 1;
            Py_XDECREF(t);
            continue;
        }
        if (rc == NOMEM) { PyErr_NoMemory(); failed = 1; }
    }
    if (!failed) {
        PyObject *blob = PyByteArray_FromStringAndSize(records.p ? records.p : "", (Py_ssize_t)records.n);
        if (blob) result = Py_BuildValue("(NKO)", blob, (unsigned long long)number, handed);
    }
    Py_XDECREF(handed);
    free(records.p);
    ctx_free(&x);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(convert_doc,
"convert(line, developer_role, binary) -> (context, response, prompt) | None\n\n"
"The JSON (orjson's bytes) of a usable line's context messages and response (a string for a\n"
"single assistant turn, else a message list), and `prompt`: the context's only user turn as a\n"
"JSON string, or None. Parts it returns meet the pair schema; None: the Python path decides.");

/* What `schemas/pair.schema.json` asks of a pair built from these parts, beyond what the
 * emitter guarantees by construction (roles of the enum, string contents, a completion that ends
 * with an assistant turn, tool_calls only when there are some, each with a name: a nameless one
 * is a reject): a context of at least one message, and in the binary format a prompt with a
 * visible character. A line that fails goes to the Python path, where jsonschema says precisely
 * what is wrong. */
static int meets_pair_schema(ctx_t *x, uint32_t msg0, uint32_t nmsg, int binary) {
    if (!nmsg) return 0;
    if (binary && nmsg == 1 && x->msgs[msg0].role == R_USER) {
        uint64_t chars = 0;
        int visible = 0;
        text_measure(x, x->msgs[msg0].seg0, x->msgs[msg0].nseg, &chars, &visible);
        if (!visible) return 0;
    }
    return 1;
}

/* chat.context_of + the response of one line, as JSON in `context`, x->out and `prompt` (the
 * context's only user turn, when it is one); OK, FAIL (ask Python) or NOMEM. */
static int convert_line(ctx_t *x, const uint8_t *line, size_t n, int binary, buf_t *context, buf_t *prompt) {
    row_t r;
    response_t resp;
    ctx_reset(x);
    context->n = prompt->n = 0;
    int rc = parse_row(x, line, n, &r);
    if (!rc) rc = check_context(x, &r);
    if (!rc) rc = response_of(x, &r, binary, &resp);
    if (!rc) rc = emit_response(x, &x->out, &resp);
    if (rc) return rc;
    uint32_t msg0 = (uint32_t)x->nmsgs;
    if (TRUTHY(r.instructions)) {
        msg_t *m = new_msg(x, R_SYSTEM);
        if (!m || add_seg(x, r.instructions, 0)) return NOMEM;
        m->nseg = 1;
    }
    if (r.input_kind == IN_STR && r.input_str.n) {
        msg_t *m = new_msg(x, R_USER);
        if (!m || add_seg(x, r.input_str, 0)) return NOMEM;
        m->nseg = 1;
    } else if (r.input_kind == IN_LIST && (rc = to_messages(x, r.input_items))) {
        return rc;
    }
    uint32_t nmsg = (uint32_t)(x->nmsgs - msg0);
    if (!meets_pair_schema(x, msg0, nmsg, binary)) return FAIL;
    if ((rc = emit_messages(x, context, msg0, nmsg))) return rc;
    if (nmsg == 1 && x->msgs[msg0].role == R_USER)
        return emit_text(x, prompt, x->msgs[msg0].seg0, x->msgs[msg0].nseg);
    return OK;
}

/* convert() and build_lines() run once per paired line: their work arrays are kept from call to
 * call (the module is only ever used with the GIL held). */
static ctx_t keep_ctx;
static buf_t keep_context, keep_prompt, keep_line, keep_response;

static PyObject *py_convert(PyObject *self, PyObject *args) {
    Py_buffer view;
    int developer_is_system, binary;
    if (!PyArg_ParseTuple(args, "y*pp", &view, &developer_is_system, &binary)) return NULL;
    keep_ctx.developer_role = developer_is_system ? R_SYSTEM : R_DEVELOPER;
    PyObject *result = NULL;
    int rc = convert_line(&keep_ctx, view.buf, (size_t)view.len, binary, &keep_context, &keep_prompt);
    PyBuffer_Release(&view);
    if (rc == FAIL) Py_RETURN_NONE;
    if (rc == NOMEM) return PyErr_NoMemory();
    PyObject *p = keep_prompt.n ? PyBytes_FromStringAndSize(keep_prompt.p, (Py_ssize_t)keep_prompt.n)
                                : Py_NewRef(Py_None);
    if (p)
        result = Py_BuildValue("(y#y#N)", keep_context.p, (Py_ssize_t)keep_context.n, keep_ctx.out.p,
                               (Py_ssize_t)keep_ctx.out.n, p);
    return result;
}

/* Read `n` bytes at `offset` of `fd` into b (from its start). */
static int read_at(int fd, uint64_t offset, uint64_t n, buf_t *b) {
    b->n = 0;
    if (grow((void **)&b->p, &b->cap, n ? n : 1, 1)) return NOMEM;
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, b->p + done, n - done, (off_t)(offset + done));
        if (got <= 0) return FAIL;  /* the file changed under us: Python reports it */
        done += (size_t)got;
    }
    b->n = n;
    return OK;
}

/* A finite double as orjson writes it: the shortest digits that read back as the same double,
 * fixed notation for decimal exponents -5..15 ("100.0", "0.00001"), else "1.5e-7" / "1e+16". */
static int emit_float(buf_t *b, double v) {
    if (v == 0) return signbit(v) ? PUTS(b, "-0.0") : PUTS(b, "0.0");
    /* Python's repr digits (the shortest that read back as v, David Gay's algorithm) */
    char *text = PyOS_double_to_string(v, 'r', 0, 0, NULL), digits[40], out[64];
    if (!text) return NOMEM;
    int n = 0, exp10 = 0, point = -1;
    const char *t = text;
    for (; *t && *t != 'e'; t++) {
        if (*t == '.') point = n;
        else if (*t >= '0' && *t <= '9' && n < 38) digits[n++] = *t;
    }
    if (*t == 'e') exp10 = (int)strtol(t + 1, NULL, 10);
    PyMem_Free(text);
    /* as d.ddd x 10^exp10, without leading or trailing zeros */
    exp10 += (point < 0 ? n : point) - 1;
    int first = 0;
    while (first < n - 1 && digits[first] == '0') { first++; exp10--; }
    memmove(digits, digits + first, (size_t)(n - first));
    n -= first;
    while (n > 1 && digits[n - 1] == '0') n--;
    int k = 0;
    if (v < 0) out[k++] = '-';
    if (exp10 >= -5 && exp10 < 16) {
        if (exp10 < 0) {
            out[k++] = '0';
            out[k++] = '.';
            for (int i = 0; i < -exp10 - 1; i++) out[k++] = '0';
            for (int i = 0; i < n; i++) out[k++] = digits[i];
        } else {
            for (int i = 0; i <= exp10; i++) out[k++] = i < n ? digits[i] : '0';
            out[k++] = '.';
            if (n > exp10 + 1) for (int i = exp10 + 1; i < n; i++) out[k++] = digits[i];
            else out[k++] = '0';
        }
    } else {
        out[k++] = digits[0];
        if (n > 1) {
            out[k++] = '.';
            for (int i = 1; i < n; i++) out[k++] = digits[i];
        }
        k += snprintf(out + k, sizeof out - k, "e%c%d", exp10 > 0 ? '+' : '-', exp10 > 0 ? exp10 : -exp10);
    }
    return put(b, out, (size_t)k);
}

/* writer.PairBuilder.extra_fields, for `data.keep_extra_fields` */
typedef struct {
    PyObject *sources;  /* per input file: its path as the start of a JSON string ("path) */
    const double *chosen_reward, *rejected_reward;
    const uint64_t *key_hi, *key_lo;
    const int64_t *chosen_line, *rejected_line;
} extra_t;

static int emit_source(buf_t *b, PyObject *sources, int64_t file, int64_t line) {
    PyObject *prefix = PyTuple_GET_ITEM(sources, file);
    char number[32];
    int n = snprintf(number, sizeof number, ":%lld\"", (long long)line);
    return put(b, PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix)) || put(b, number, (size_t)n)
           ? NOMEM : OK;
}

static int emit_extra(buf_t *line, const extra_t *e, Py_ssize_t k, int64_t chosen_file, int64_t rejected_file) {
    char group[40];
    snprintf(group, sizeof group, "\"%016llx%016llx\"", (unsigned long long)e->key_hi[k],
             (unsigned long long)e->key_lo[k]);
    line->n -= 2;  /* "}\n" */
    if (PUTS(line, ",\"chosen_reward\":") || emit_float(line, e->chosen_reward[k]) ||
        PUTS(line, ",\"rejected_reward\":") || emit_float(line, e->rejected_reward[k]) ||
        PUTS(line, ",\"reward_gap\":") || emit_float(line, e->chosen_reward[k] - e->rejected_reward[k]) ||
        PUTS(line, ",\"group_id\":") || put(line, group, 34) || PUTS(line, ",\"chosen_source\":") ||
        emit_source(line, e->sources, chosen_file, e->chosen_line[k]) || PUTS(line, ",\"rejected_source\":") ||
        emit_source(line, e->sources, rejected_file, e->rejected_line[k]) || PUTS(line, "}\n"))
        return NOMEM;
    return OK;
}

/* The JSONL line of one pair (writer.preference_line / writer.binary_line), or FAIL. */
static int pair_line(int chosen_fd, uint64_t chosen_offset, uint64_t chosen_n, int rejected_fd,
                     uint64_t rejected_offset, uint64_t rejected_n, int binary, buf_t *line) {
    ctx_t *x = &keep_ctx;
    int rc;
    line->n = 0;
    /* the rejected side first: only its response is kept */
    if ((rc = read_at(rejected_fd, rejected_offset, rejected_n, &keep_line))) return rc;
    if ((rc = convert_line(x, (uint8_t *)keep_line.p, keep_line.n, binary, &keep_context, &keep_prompt)))
        return rc;
    keep_response.n = 0;
    if (put(&keep_response, x->out.p, x->out.n)) return NOMEM;
    if ((rc = read_at(chosen_fd, chosen_offset, chosen_n, &keep_line))) return rc;
    if ((rc = convert_line(x, (uint8_t *)keep_line.p, keep_line.n, binary, &keep_context, &keep_prompt)))
        return rc;
    buf_t *chosen = &x->out, *rejected = &keep_response;
    if (binary) {
        buf_t *prompt = keep_prompt.n ? &keep_prompt : &keep_context;
        if (PUTS(line, "{\"prompt\":") || put(line, prompt->p, prompt->n) || PUTS(line, ",\"chosen\":") ||
            put(line, chosen->p, chosen->n) || PUTS(line, ",\"rejected\":") ||
            put(line, rejected->p, rejected->n) || PUTS(line, "}\n"))
            return NOMEM;
        return OK;
    }
    if (PUTS(line, "{\"context\":") || put(line, keep_context.p, keep_context.n) ||
        PUTS(line, ",\"completions\":[{\"rank\":0,\"completion\":"))
        return NOMEM;
    for (int side = 0; side < 2; side++) {
        buf_t *response = side ? rejected : chosen;
        int text = response->n && response->p[0] == '"';
        if ((side && PUTS(line, "},{\"rank\":1,\"completion\":")) ||
            (text && PUTS(line, "[{\"role\":\"assistant\",\"content\":")) ||
            put(line, response->p, response->n) || (text && PUTS(line, "}]")))
            return NOMEM;
    }
    return PUTS(line, "}]}\n");
}

PyDoc_STRVAR(build_lines_doc,
"build_lines(fds, chosen_file, chosen_offset, chosen_nbytes, rejected_file, rejected_offset,\n"
"            rejected_nbytes, developer_role, binary, extra) -> list[bytes | None]\n\n"
"The JSONL line (with its newline) of every pair: the columns are int64 arrays, one entry per\n"
"pair, `fds` the open input files. None where the Python path must build the pair. `extra`:\n"
"None, or (sources, chosen_reward, rejected_reward, key_hi, key_lo, chosen_line, rejected_line)\n"
"for data.keep_extra_fields (sources: each file's path as the start of a JSON string).");

static PyObject *py_build_lines(PyObject *self, PyObject *args) {
    PyObject *fds, *extra_arg;
    Py_buffer col[13];
    int developer_is_system, binary, ncols = 6;
    extra_t extra = {0};
    memset(col, 0, sizeof col);
    if (!PyArg_ParseTuple(args, "O!y*y*y*y*y*y*ppO", &PyTuple_Type, &fds, &col[0], &col[1], &col[2],
                          &col[3], &col[4], &col[5], &developer_is_system, &binary, &extra_arg))
        return NULL;
    PyObject *lines = NULL;
    Py_ssize_t count = col[0].len / 8, nfds = PyTuple_GET_SIZE(fds);
    if (extra_arg != Py_None) {
        if (!PyArg_ParseTuple(extra_arg, "O!y*y*y*y*y*y*", &PyTuple_Type, &extra.sources, &col[6], &col[7],
                              &col[8], &col[9], &col[10], &col[11]))
            goto done;
        ncols = 12;
        extra.chosen_reward = col[6].buf;
        extra.rejected_reward = col[7].buf;
        extra.key_hi = col[8].buf;
        extra.key_lo = col[9].buf;
        extra.chosen_line = col[10].buf;
        extra.rejected_line = col[11].buf;
        if (PyTuple_GET_SIZE(extra.sources) != nfds) {
            PyErr_SetString(PyExc_ValueError, "one source per file");
            goto done;
        }
        for (Py_ssize_t i = 0; i < nfds; i++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(extra.sources, i))) {
                PyErr_SetString(PyExc_TypeError, "sources are bytes");
                goto done;
            }
    }
    for (int i = 1; i < ncols; i++)
        if (col[i].len != col[0].len) { PyErr_SetString(PyExc_ValueError, "columns differ in length"); goto done; }
    if (!(lines = PyList_New(count))) goto done;
    keep_ctx.developer_role = developer_is_system ? R_SYSTEM : R_DEVELOPER;
    const int64_t *c[6];
    for (int i = 0; i < 6; i++) c[i] = col[i].buf;
    buf_t line = {0};
    for (Py_ssize_t k = 0; k < count; k++) {
        int rc = FAIL;
        if (c[0][k] >= 0 && c[0][k] < nfds && c[3][k] >= 0 && c[3][k] < nfds) {
            int chosen_fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(fds, c[0][k]));
            int rejected_fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(fds, c[3][k]));
            if (PyErr_Occurred()) { Py_CLEAR(lines); break; }
            rc = pair_line(chosen_fd, (uint64_t)c[1][k], (uint64_t)c[2][k], rejected_fd,
                           (uint64_t)c[4][k], (uint64_t)c[5][k], binary, &line);
            if (rc == OK && ncols == 12) rc = emit_extra(&line, &extra, k, c[0][k], c[3][k]);
        }
        PyObject *item = rc == OK ? PyBytes_FromStringAndSize(line.p, (Py_ssize_t)line.n)
                       : rc == FAIL ? Py_NewRef(Py_None) : PyErr_NoMemory();
        if (!item) { Py_CLEAR(lines); break; }
        PyList_SET_ITEM(lines, k, item);
    }
    free(line.p);
done:
    for (int i = 0; i < 13; i++)
        if (col[i].obj) PyBuffer_Release(&col[i]);
    return lines;
}

static PyObject *py_float_json(PyObject *self, PyObject *arg) {
    double v = PyFloat_AsDouble(arg);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    if (!isfinite(v)) { PyErr_SetString(PyExc_ValueError, "not finite"); return NULL; }
    buf_t b = {0};
    if (emit_float(&b, v)) { free(b.p); return PyErr_NoMemory(); }
    PyObject *result = PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.n);
    free(b.p);
    return result;
}

static PyObject *py_xxh64(PyObject *self, PyObject *args) {
    Py_buffer view;
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &view, &seed)) return NULL;
    uint64_t h = xxh64(view.buf, (size_t)view.len, seed);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *py_is_space(PyObject *self, PyObject *arg) {
    unsigned long cp = PyLong_AsUnsignedLong(arg);
    if (cp == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(is_space((uint32_t)cp));
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS, scan_doc},
    {"convert", py_convert, METH_VARARGS, convert_doc},
    {"build_lines", py_build_lines, METH_VARARGS, build_lines_doc},
    {"xxh64", py_xxh64, METH_VARARGS, "xxh64(data, seed=0): this module's XXH64 (for tests)."},
    {"is_space", py_is_space, METH_O, "is_space(code point): what it takes for whitespace (for tests)."},
    {"float_json", py_float_json, METH_O, "float_json(x): a float as this module writes it (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_native", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
