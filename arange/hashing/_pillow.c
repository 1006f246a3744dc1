/* Pillow's convert('L') and two-pass LANCZOS resize of image batches, in Pillow's own integer
 * arithmetic, fused per image: the native CPU fast path of arange.hashing.fast.
 *
 * Per image: grey levels ((19595 R + 38470 G + 7471 B + 2**15) >> 16, as Pillow) are written
 * as bytes in "quad" order: for each group of 4 rows and each group of 4 columns, 16 bytes
 * [row 0: 4 columns][row 1: ...][row 2][row 3]. A resize pass is then, for every quad of rows
 * and every block of 4 outputs, a sum over column groups of u8 x s8 dot products of 4 columns:
 * one 16-lane vector holds the 4 rows x 4 outputs, and its 16 results, rounded as Pillow's
 * clip8 rounds, are exactly the quad-ordered input of the next pass (rows and columns swap
 * roles), so the vertical pass runs the same code on the horizontal pass's output.
 *
 * Pillow's fixed-point weights (scaled by 2**22, computed by the caller) are split into 7-bit
 * pieces, w = sum_p piece_p * 2**(7p) with every piece but the last in [0, 127] and the last
 * signed, so each product fits a signed byte operand; every sum is exact 32-bit integer
 * arithmetic, as in Pillow's Resample.c. Each pass is rounded to 8 bits; the horizontal pass
 * runs first unless the caller says Pillow runs the vertical one first (recent Pillow does when
 * the height shrinks by more than twice as many pixels as the width).
 *
 * Two implementations of the same arithmetic: AVX-512 VNNI (vpdpbusd) when the CPU has it,
 * and portable C. They give identical bytes; `resize(..., impl)` picks one for the tests.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define HAVE_VNNI_BUILD 1
#include <immintrin.h>
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#else
#define HAVE_VNNI_BUILD 0
#endif

#define PRECISION_BITS 22
#define MAX_PIECES 4
#define MAX_PLANS 8

enum { MODE_U8 = 0, MODE_UNIT = 1, MODE_LEVELS = 2 };
enum { IMPL_AUTO = 0, IMPL_PORTABLE = 1, IMPL_VNNI = 2 };
enum { BITS_NONE = 0, BITS_MEAN = 1, BITS_DIFF = 2 };

/* One resize pass as the kernel sees it: `nout` outputs in blocks of 4, `ngroups` input
 * groups of 4, weights as [block][group][piece][16 lanes][4 bytes] signed bytes. */
typedef struct {
    int nout, nblocks, ngroups, pieces;
    int8_t *w;          /* 64-byte aligned */
    int *glo, *ghi;     /* [nblocks]: groups with a nonzero weight */
} pass_t;

typedef struct {
    int ow, oh;
    int hskip, vskip;   /* the pass keeps the size: Pillow skips it */
    int vfirst;         /* Pillow runs the vertical pass first (both passes needed) */
    pass_t h, v;
    uint8_t *out;       /* [n][oh][ow] */
    int bits_kind;      /* BITS_*: imagehash bits of each output image, if any */
    uint8_t *bits;      /* [n][oh * ow] (BITS_MEAN) or [n][oh * (ow - 1)] (BITS_DIFF) */
} plan_t;

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64))
        return NULL;
    return p;
}

/* The next image is streamed into the cache while this one computes: its cache lines are
 * prefetched in step with this image's work (`tick` is told rough cycle counts of each piece),
 * so the reads are spread over the whole image instead of bursting while the grey conversion
 * runs; one core keeps only a few misses in flight, and a burst stalls the conversion. Within
 * a piece of work the lines go out one at a time (per row of the grey conversion, per column
 * group of a pass) toward `prefetch_goal`, as a burst of even ten fills the line-fill buffers.
 * `rate` (lines per unit of work, 16.16 fixed point) comes from the previous image's total
 * work, as every image of a batch does the same work; 0 (the first image) prefetches nothing. */
typedef struct {
    const char *next;
    size_t lines, issued;
    uint64_t work, rate;
} prefetch_t;

/* The lines that should have been prefetched once `work` more is done. */
static inline size_t prefetch_goal(const prefetch_t *pf, uint64_t work) {
    const size_t goal = (size_t)(((pf->work + work) * pf->rate) >> 16);
    return goal < pf->lines ? goal : pf->lines;
}

static inline void prefetch_line(prefetch_t *pf) {
    __builtin_prefetch(pf->next + 64 * pf->issued++, 0, 2);  /* into L2 */
}

static inline void tick(prefetch_t *pf, uint64_t work) {
    const size_t goal = prefetch_goal(pf, work);
    pf->work += work;
    while (pf->issued < goal)
        prefetch_line(pf);
}

/* Weights (nout, nin) int32 row-major -> a pass_t; -1 when out of memory. */
static int make_pass(pass_t *ps, const int32_t *k, int nout, int nin) {
    int32_t peak = 0;
    for (size_t i = 0; i < (size_t)nout * nin; i++) {
        const int32_t a = k[i] < 0 ? -k[i] : k[i];
        peak = a > peak ? a : peak;
    }
    ps->pieces = 1;
    while (ps->pieces < MAX_PIECES && (peak >> (7 * (ps->pieces - 1))) > 127)
        ps->pieces++;
    ps->nout = nout;
    ps->nblocks = (nout + 3) / 4;
    ps->ngroups = (nin + 3) / 4;
    const size_t units = (size_t)ps->nblocks * ps->ngroups * ps->pieces;
    ps->w = aligned(units * 64);
    ps->glo = calloc(ps->nblocks, sizeof(int));
    ps->ghi = calloc(ps->nblocks, sizeof(int));
    if (!ps->w || !ps->glo || !ps->ghi)
        return -1;
    memset(ps->w, 0, units * 64);
    const int top = 7 * (ps->pieces - 1);
    for (int b = 0; b < ps->nblocks; b++) {
        /* the band of column groups where an output of this block has a nonzero weight; the
         * units outside it stay zero and the passes never read them */
        int lo = ps->ngroups, hi = 0;
        for (int j = 4 * b; j < 4 * b + 4 && j < nout; j++)
            for (int x = 0; x < nin; x++)
                if (k[(size_t)j * nin + x]) {
                    lo = x / 4 < lo ? x / 4 : lo;
                    hi = x / 4 + 1 > hi ? x / 4 + 1 : hi;
                }
        for (int g = lo; g < hi; g++) {
            int8_t *unit = ps->w + ((size_t)b * ps->ngroups + g) * ps->pieces * 64;
            for (int kk = 0; kk < 4 && 4 * b + kk < nout; kk++)
                for (int p = 0; p < ps->pieces; p++) {
                    int8_t dword[4];  /* piece p of the weights of 4 columns, output 4 b + kk */
                    for (int i = 0; i < 4; i++) {
                        const int x = 4 * g + i;
                        const int32_t c = x < nin ? k[(size_t)(4 * b + kk) * nin + x] : 0;
                        dword[i] = (int8_t)(p == ps->pieces - 1 ? c >> top : (c >> (7 * p)) & 127);
                    }
                    for (int r = 0; r < 4; r++)  /* the same for each row: lane 4 kk + r */
                        memcpy(unit + p * 64 + (4 * kk + r) * 4, dword, 4);
                }
        }
        ps->glo[b] = lo < hi ? lo : 0;
        ps->ghi[b] = lo < hi ? hi : 0;
    }
    return 0;
}

static void free_pass(pass_t *ps) {
    free(ps->w);
    free(ps->glo);
    free(ps->ghi);
}

/* ------------------------------------------------------------------------- portable C */

static inline int32_t luma(int32_t r, int32_t g, int32_t b) {
    return (19595 * r + 38470 * g + 7471 * b + (1 << 15)) >> 16;
}

/* One float sample -> 8-bit level. MODE_UNIT: round(clamp(v, 0, 1) * 255) in float32, ties to
 * even (torch.round); MODE_LEVELS: round(clamp(v, 0, 255)). NaN reads as 0. */
static inline int32_t level(float v, int mode) {
    const float top = mode == MODE_UNIT ? 1.0f : 255.0f;
    v = v > 0.0f ? v : 0.0f;
    v = v < top ? v : top;
    if (mode == MODE_UNIT)
        v *= 255.0f;
    return (int32_t)rintf(v);
}

static inline uint8_t grey_at(const void *img, int mode, int c, size_t plane, size_t i) {
    if (mode == MODE_U8) {
        const uint8_t *s = img;
        return (uint8_t)(c == 3 ? luma(s[i], s[plane + i], s[2 * plane + i]) : s[i]);
    }
    const float *s = img;
    if (c == 3)
        return (uint8_t)luma(level(s[i], mode), level(s[plane + i], mode),
                             level(s[2 * plane + i], mode));
    return (uint8_t)level(s[i], mode);
}

/* Grey of rows 4q..4q+3 (missing rows and columns are 0) -> quad units [g][r][i], for the
 * column groups from g0 on. */
static void grey_quad_portable(const void *img, int mode, int c, int h, int w, int q,
                               uint8_t *dst, int g0, prefetch_t *pf) {
    const int ng = (w + 3) / 4;
    const size_t plane = (size_t)h * w;
    for (int g = g0; g < ng; g++)
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < 4; i++) {
                const int y = 4 * q + r, x = 4 * g + i;
                dst[g * 16 + r * 4 + i] =
                    (y < h && x < w) ? grey_at(img, mode, c, plane, (size_t)y * w + x) : 0;
            }
    tick(pf, (uint64_t)(ng - g0) * 16 * c);
}

static inline uint8_t round8(uint32_t total) {
    const int32_t ss = (int32_t)(total + (1u << (PRECISION_BITS - 1))) >> PRECISION_BITS;
    return (uint8_t)(ss < 0 ? 0 : (ss > 255 ? 255 : ss));
}

/* One pass: src quad units [nquads][ngroups][16] -> dst [block][quad][16] (the next pass's
 * quad units) with dst unit lane 4 kk + r = output 4 b + kk of row 4 q + r. */
static void pass_portable(const uint8_t *src, int nquads, const pass_t *ps, uint8_t *dst,
                          prefetch_t *pf) {
    for (int q = 0; q < nquads; q++) {
        const uint8_t *sq = src + (size_t)q * ps->ngroups * 16;
        for (int b = 0; b < ps->nblocks; b++) {
            uint32_t acc[MAX_PIECES][16] = {{0}};
            for (int g = ps->glo[b]; g < ps->ghi[b]; g++) {
                const uint8_t *v = sq + (size_t)g * 16;
                const int8_t *wu = ps->w + ((size_t)b * ps->ngroups + g) * ps->pieces * 64;
                for (int p = 0; p < ps->pieces; p++)
                    for (int lane = 0; lane < 16; lane++) {
                        const uint8_t *px = v + (lane & 3) * 4;  /* row r = lane % 4 */
                        const int8_t *wt = wu + p * 64 + lane * 4;
                        acc[p][lane] += (uint32_t)(px[0] * wt[0] + px[1] * wt[1] +
                                                   px[2] * wt[2] + px[3] * wt[3]);
                    }
            }
            uint8_t *o = dst + ((size_t)b * nquads + q) * 16;
            for (int lane = 0; lane < 16; lane++) {
                uint32_t total = 0;
                for (int p = 0; p < ps->pieces; p++)
                    total += acc[p][lane] << (7 * p);
                o[lane] = round8(total);
            }
            tick(pf, (uint64_t)(ps->ghi[b] - ps->glo[b]) * ps->pieces * 64 + 16);
        }
    }
}

/* ------------------------------------------------------------------------- AVX-512 VNNI */

#if HAVE_VNNI_BUILD
/* Pillow's grey of 16 pixels from three 32-bit planes r, g, b. The sum is split so signed
 * 16-bit multiply-adds stay exact: 19595 R + 38470 G = madd((R, G), (19595, 38470 - 65536))
 * + 65536 G, and 7471 B + 2**15 = madd((B, 2), (7471, 2**14)). */
VNNI static inline __m512i luma16(__m512i r, __m512i g, __m512i b) {
    const __m512i g16 = _mm512_slli_epi32(g, 16);
    const __m512i w1 = _mm512_set1_epi32((int32_t)((uint32_t)(uint16_t)(38470 - 65536) << 16 | 19595));
    const __m512i w2 = _mm512_set1_epi32((int32_t)(16384u << 16 | 7471u));
    const __m512i rg = _mm512_or_si512(r, g16);
    const __m512i b2 = _mm512_or_si512(b, _mm512_set1_epi32(2 << 16));
    __m512i sum = _mm512_add_epi32(_mm512_madd_epi16(rg, w1), _mm512_madd_epi16(b2, w2));
    return _mm512_srli_epi32(_mm512_add_epi32(sum, g16), 16);
}

VNNI static inline __m512i u8x16(const uint8_t *s) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)s));
}

VNNI static inline __m512i levels16(const float *s, int mode) {
    const __m512 top = _mm512_set1_ps(mode == MODE_UNIT ? 1.0f : 255.0f);
    __m512 v = _mm512_max_ps(_mm512_loadu_ps(s), _mm512_setzero_ps());  /* NaN -> 0 */
    v = _mm512_min_ps(v, top);
    if (mode == MODE_UNIT)
        v = _mm512_mul_ps(v, _mm512_set1_ps(255.0f));
    return _mm512_cvtps_epi32(v);  /* round to nearest even */
}

/* Grey of 16 pixels of row y from column x as 32-bit lanes. */
VNNI static inline __m512i grey16(const void *img, int mode, int c, size_t plane, size_t i) {
    if (mode == MODE_U8) {
        const uint8_t *s = (const uint8_t *)img + i;
        if (c == 1)
            return u8x16(s);
        return luma16(u8x16(s), u8x16(s + plane), u8x16(s + 2 * plane));
    }
    const float *s = (const float *)img + i;
    if (c == 1)
        return levels16(s, mode);
    return luma16(levels16(s, mode), levels16(s + plane, mode), levels16(s + 2 * plane, mode));
}

/* Four rows of 16 grey levels packed to bytes: the unsigned saturating packs work within
 * 128-bit lanes, so lane k of the result is [row 0: columns 4k..4k+3][row 1]...[row 3], the
 * quad unit of column group k. */
VNNI static inline void store_quad(uint8_t *dst, const __m512i *rows) {
    const __m512i ab = _mm512_packus_epi32(rows[0], rows[1]);
    const __m512i cd = _mm512_packus_epi32(rows[2], rows[3]);
    _mm512_storeu_si512(dst, _mm512_packus_epi16(ab, cd));
}

/* Pillow's grey of 64 pixels (one zmm of each plane) as bytes, in 16-bit arithmetic. With
 * 19595 = 76 * 256 + 139, 38470 = 150 * 256 + 70 and 7471 = 29 * 256 + 47, the sum is
 * 256 hi + lo + 2**15 for hi = 76 R + 150 G + 29 B and lo = 139 R + 70 G + 47 B, so the grey
 * level is (hi + 128 + (lo >> 8)) >> 8, every step exact in 16 bits. Unsigned-by-signed byte
 * multiply-adds (vpmaddubsw) form hi and lo from the pixels minus 128 (signed bytes, never
 * saturating), which moves every term by a constant: with those, and 64 * 2 carrying a +128,
 * (hi' + (lo' >> 8)) >> 8 (arithmetic shifts) is the level minus 128. The unpacks and the
 * signed pack both work within 128-bit lanes, so the bytes come back in pixel order. */
VNNI static inline __m512i grey64(const uint8_t *s, size_t plane) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i r = _mm512_xor_si512(_mm512_loadu_si512(s), flip);
    const __m512i g = _mm512_xor_si512(_mm512_loadu_si512(s + plane), flip);
    const __m512i b = _mm512_xor_si512(_mm512_loadu_si512(s + 2 * plane), flip);
    const __m512i c64 = _mm512_set1_epi8(64);
    const __m512i whi_rg = _mm512_set1_epi16(150 << 8 | 76), wlo_rg = _mm512_set1_epi16(70 << 8 | 139);
    const __m512i whi_b = _mm512_set1_epi16(2 << 8 | 29), wlo_b = _mm512_set1_epi16(47);
    __m512i half[2];
    for (int k = 0; k < 2; k++) {
        const __m512i rg = k ? _mm512_unpackhi_epi8(r, g) : _mm512_unpacklo_epi8(r, g);
        const __m512i bc = k ? _mm512_unpackhi_epi8(b, c64) : _mm512_unpacklo_epi8(b, c64);
        const __m512i hi = _mm512_add_epi16(_mm512_maddubs_epi16(whi_rg, rg),
                                            _mm512_maddubs_epi16(whi_b, bc));
        const __m512i lo = _mm512_add_epi16(_mm512_maddubs_epi16(wlo_rg, rg),
                                            _mm512_maddubs_epi16(wlo_b, bc));
        half[k] = _mm512_srai_epi16(_mm512_add_epi16(hi, _mm512_srai_epi16(lo, 8)), 8);
    }
    return _mm512_xor_si512(_mm512_packs_epi16(half[0], half[1]), flip);
}

/* Four rows of 64 grey bytes -> the 16 quad units of their 16 column groups: a 4 x 16 dword
 * transpose in two rounds of two-source permutes. */
VNNI static inline void store_quads64(uint8_t *dst, __m512i r0, __m512i r1, __m512i r2,
                                      __m512i r3) {
    const __m512i pair_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i pair_hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                             24, 8);
    const __m512i quad_lo = _mm512_set_epi32(23, 22, 7, 6, 21, 20, 5, 4, 19, 18, 3, 2, 17, 16, 1, 0);
    const __m512i quad_hi = _mm512_set_epi32(31, 30, 15, 14, 29, 28, 13, 12, 27, 26, 11, 10, 25, 24,
                                             9, 8);
    const __m512i a = _mm512_permutex2var_epi32(r0, pair_lo, r1);  /* columns 0-31, rows 0-1 */
    const __m512i b = _mm512_permutex2var_epi32(r0, pair_hi, r1);  /* columns 32-63 */
    const __m512i c = _mm512_permutex2var_epi32(r2, pair_lo, r3);
    const __m512i d = _mm512_permutex2var_epi32(r2, pair_hi, r3);
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi32(a, quad_lo, c));
    _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi32(a, quad_hi, c));
    _mm512_storeu_si512(dst + 128, _mm512_permutex2var_epi32(b, quad_lo, d));
    _mm512_storeu_si512(dst + 192, _mm512_permutex2var_epi32(b, quad_hi, d));
}

VNNI static void grey_quad_vnni(const void *img, int mode, int c, int h, int w, int q,
                                uint8_t *dst, prefetch_t *pf) {
    const size_t plane = (size_t)h * w, item = mode == MODE_U8 ? 1 : 4;
    const int full = (w / 16) * 16;
    if (mode == MODE_U8 && c == 3 && 4 * q + 3 < h) {
        /* the common case, without the general loop's per-row tests */
        const uint8_t *s = (const uint8_t *)img + (size_t)4 * q * w;
        const int full64 = (w / 64) * 64;
        for (int x = 0; x < full64; x += 64) {
            __m512i r[4];
            for (int k = 0; k < 4; k++) {  /* the prefetches spread over the four rows */
                tick(pf, 16);
                r[k] = grey64(s + (size_t)k * w + x, plane);
            }
            store_quads64(dst + (size_t)x * 4, r[0], r[1], r[2], r[3]);
        }
        for (int x = full64; x < full; x += 16) {
            tick(pf, 24);
            __m512i rows[4];
            for (int r = 0; r < 4; r++) {
                const uint8_t *sr = s + (size_t)r * w + x;
                rows[r] = luma16(u8x16(sr), u8x16(sr + plane), u8x16(sr + 2 * plane));
            }
            store_quad(dst + (size_t)x * 4, rows);
        }
    } else {
        for (int x = 0; x < full; x += 16) {
            tick(pf, 8 * c * item);
            __m512i rows[4];
            for (int r = 0; r < 4; r++) {
                const int y = 4 * q + r;
                rows[r] = y < h ? grey16(img, mode, c, plane, (size_t)y * w + x)
                                : _mm512_setzero_si512();
            }
            store_quad(dst + (size_t)x * 4, rows);
        }
    }
    if (full < w)  /* the last columns */
        grey_quad_portable(img, mode, c, h, w, q, dst, full / 4, pf);
}

VNNI static inline __m128i finish(const __m512i *a, int P) {
    __m512i total = _mm512_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int p = 0; p < P; p++)
        total = _mm512_add_epi32(total, _mm512_slli_epi32(a[p], 7 * p));
    total = _mm512_srai_epi32(total, PRECISION_BITS);
    total = _mm512_min_epi32(_mm512_max_epi32(total, _mm512_setzero_si512()),
                             _mm512_set1_epi32(255));
    return _mm512_cvtepi32_epi8(total);
}

/* acc += dot(v as u8, k as s8) per 32-bit lane. Written as asm because GCC 12 copies the
 * accumulator around the intrinsic (two register moves per dot product in the hot loops). */
VNNI static inline __m512i dpbusd(__m512i acc, __m512i v, __m512i k) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(v), "vm"(k));
    return acc;
}

#define BCAST(ptr) _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(ptr)))

/* The last block of a pass whose output count is not a multiple of 4 (dhash's ninth column):
 * its m < 4 outputs would fill only m of the 4 output lanes of every vector, so here each
 * output has its own vectors with one lane per row of the four quads (the four quads' units of
 * a column group side by side, times that output's weights broadcast), and a 4 x 4 transpose
 * writes the usual units (the unused outputs' bytes are 0). */
VNNI static inline __attribute__((always_inline)) void
partial_block_p3(const pass_t *ps, int b, const int m, const uint8_t *const s[4], int q,
                 int nquads, uint8_t *dst, prefetch_t *pf, size_t goal) {
    __m512i acc[3][3];
    for (int kk = 0; kk < 3; kk++)
        for (int p = 0; p < 3; p++)
            acc[kk][p] = _mm512_setzero_si512();
    const int8_t *wb = ps->w + (size_t)b * ps->ngroups * 3 * 64;
    for (int g = ps->glo[b]; g < ps->ghi[b]; g++) {
        if (pf->issued < goal)
            prefetch_line(pf);
        __m512i v = _mm512_castsi128_si512(_mm_load_si128((const __m128i *)(s[0] + g * 16)));
        v = _mm512_inserti32x4(v, _mm_load_si128((const __m128i *)(s[1] + g * 16)), 1);
        v = _mm512_inserti32x4(v, _mm_load_si128((const __m128i *)(s[2] + g * 16)), 2);
        v = _mm512_inserti32x4(v, _mm_load_si128((const __m128i *)(s[3] + g * 16)), 3);
        const int8_t *wu = wb + (size_t)g * 3 * 64;
        for (int kk = 0; kk < m; kk++)
            for (int p = 0; p < 3; p++) {
                int32_t k;  /* output kk's 4 weight bytes: lane 4 kk (row 0) of piece p */
                memcpy(&k, wu + p * 64 + kk * 16, 4);
                acc[kk][p] = dpbusd(acc[kk][p], v, _mm512_set1_epi32(k));
            }
    }
    __m128i res[4];
    for (int kk = 0; kk < 4; kk++)  /* byte 4 u + r: output kk of row 4 (q + u) + r */
        res[kk] = kk < m ? finish(acc[kk], 3) : _mm_setzero_si128();
    const __m128i t0 = _mm_unpacklo_epi32(res[0], res[1]), t1 = _mm_unpacklo_epi32(res[2], res[3]);
    const __m128i t2 = _mm_unpackhi_epi32(res[0], res[1]), t3 = _mm_unpackhi_epi32(res[2], res[3]);
    const __m128i units[4] = {_mm_unpacklo_epi64(t0, t1), _mm_unpackhi_epi64(t0, t1),
                              _mm_unpacklo_epi64(t2, t3), _mm_unpackhi_epi64(t2, t3)};
    for (int u = 0; u < 4 && q + u < nquads; u++)
        _mm_store_si128((__m128i *)(dst + ((size_t)b * nquads + q + u) * 16), units[u]);
}

/* Three weight pieces (every downscale by more than about 2x): four row quads at a time, each
 * weight vector loaded once for all four, twelve independent dot-product chains in pinned
 * registers (GCC 12 otherwise copies each accumulator twice around vpdpbusd). A last partial
 * set of quads repeats the final quad and drops the extra results. */
VNNI static void pass_vnni_p3(const uint8_t *src, int nquads, const pass_t *ps, uint8_t *dst,
                              prefetch_t *pf) {
    const size_t qstride = (size_t)ps->ngroups * 16;
    for (int q = 0; q < nquads; q += 4) {
        const uint8_t *s0 = src + (size_t)q * qstride;
        const uint8_t *s1 = src + (size_t)(q + 1 < nquads ? q + 1 : nquads - 1) * qstride;
        const uint8_t *s2 = src + (size_t)(q + 2 < nquads ? q + 2 : nquads - 1) * qstride;
        const uint8_t *s3 = src + (size_t)(q + 3 < nquads ? q + 3 : nquads - 1) * qstride;
        for (int b = 0; b < ps->nblocks; b++) {
            const int m = ps->nout - 4 * b;
            if (m < 4) {
                const uint8_t *const s[4] = {s0, s1, s2, s3};
                const uint64_t work = (uint64_t)(ps->ghi[b] - ps->glo[b]) * 3 * m + 16;
                const size_t goal = prefetch_goal(pf, work);
                if (m == 1)
                    partial_block_p3(ps, b, 1, s, q, nquads, dst, pf, goal);
                else if (m == 2)
                    partial_block_p3(ps, b, 2, s, q, nquads, dst, pf, goal);
                else
                    partial_block_p3(ps, b, 3, s, q, nquads, dst, pf, goal);
                tick(pf, work);
                continue;
            }
            register __m512i a0 __asm__("zmm20") = _mm512_setzero_si512();
            register __m512i a1 __asm__("zmm21") = a0, a2 __asm__("zmm22") = a0;
            register __m512i b0 __asm__("zmm23") = a0, b1 __asm__("zmm24") = a0;
            register __m512i b2 __asm__("zmm25") = a0, c0 __asm__("zmm26") = a0;
            register __m512i c1 __asm__("zmm27") = a0, c2 __asm__("zmm28") = a0;
            register __m512i d0 __asm__("zmm29") = a0, d1 __asm__("zmm30") = a0;
            register __m512i d2 __asm__("zmm31") = a0;
            const __m512i *wg = (const __m512i *)(ps->w + (size_t)b * ps->ngroups * 3 * 64)
                                + (size_t)ps->glo[b] * 3;
            const uint64_t work = (uint64_t)(ps->ghi[b] - ps->glo[b]) * 12 + 16;
            const size_t goal = prefetch_goal(pf, work);
            for (int g = ps->glo[b]; g < ps->ghi[b]; g++, wg += 3) {
                if (pf->issued < goal)  /* a line per group rather than a burst per block */
                    prefetch_line(pf);
                const __m512i k0 = wg[0], k1 = wg[1], k2 = wg[2];
                const __m512i v0 = BCAST(s0 + g * 16), v1 = BCAST(s1 + g * 16),
                              v2 = BCAST(s2 + g * 16), v3 = BCAST(s3 + g * 16);
#define DP(acc, v, k) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(v), "v"(k))
                DP(a0, v0, k0); DP(b0, v1, k0); DP(c0, v2, k0); DP(d0, v3, k0);
                DP(a1, v0, k1); DP(b1, v1, k1); DP(c1, v2, k1); DP(d1, v3, k1);
                DP(a2, v0, k2); DP(b2, v1, k2); DP(c2, v2, k2); DP(d2, v3, k2);
#undef DP
            }
            const __m512i r[4][3] = {{a0, a1, a2}, {b0, b1, b2}, {c0, c1, c2}, {d0, d1, d2}};
            for (int u = 0; u < 4 && q + u < nquads; u++)
                _mm_store_si128((__m128i *)(dst + ((size_t)b * nquads + q + u) * 16),
                                finish(r[u], 3));
            tick(pf, work);
        }
    }
}

/* Any number of pieces (upscales need up to four), one quad at a time. */
VNNI static void pass_vnni(const uint8_t *src, int nquads, const pass_t *ps, uint8_t *dst,
                           prefetch_t *pf) {
    const int P = ps->pieces;
    if (P == 3) {
        pass_vnni_p3(src, nquads, ps, dst, pf);
        return;
    }
    const size_t qstride = (size_t)ps->ngroups * 16;
    for (int q = 0; q < nquads; q++) {
        const uint8_t *s0 = src + (size_t)q * qstride;
        for (int b = 0; b < ps->nblocks; b++) {
            __m512i a[MAX_PIECES];
            for (int p = 0; p < MAX_PIECES; p++)
                a[p] = _mm512_setzero_si512();
            const __m512i *wb = (const __m512i *)(ps->w + (size_t)b * ps->ngroups * P * 64);
            for (int g = ps->glo[b]; g < ps->ghi[b]; g++) {
                const __m512i v0 = BCAST(s0 + g * 16);
                for (int p = 0; p < P; p++)
                    a[p] = dpbusd(a[p], v0, _mm512_load_si512(wb + (size_t)g * P + p));
            }
            _mm_store_si128((__m128i *)(dst + ((size_t)b * nquads + q) * 16), finish(a, P));
            tick(pf, (uint64_t)(ps->ghi[b] - ps->glo[b]) * P + 8);
        }
    }
}
#endif

/* ------------------------------------------------------------------------- one image */

static int use_vnni(int impl) {
#if HAVE_VNNI_BUILD
    if (impl == IMPL_PORTABLE)
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    (void)impl;
    return 0;
#endif
}

/* grey: [hq][wg][16]; mid: [nblocks_h][hq][16] (or the grey regrouped when the horizontal
 * pass is skipped); fin: [nblocks_v][nblocks_h][16]. */
static void run_pass(const uint8_t *src, int nquads, const pass_t *ps, uint8_t *dst, int vnni,
                     prefetch_t *pf) {
#if HAVE_VNNI_BUILD
    if (vnni) {
        pass_vnni(src, nquads, ps, dst, pf);
        return;
    }
#endif
    (void)vnni;
    pass_portable(src, nquads, ps, dst, pf);
}

/* imagehash's bits of one resized image `o` (oh, ow): average_hash (each level above the
 * float64 mean, which for integer levels is exactly npx * level > sum) or dhash (each level
 * above its left neighbour), as 0/1 bytes in imagehash's row-major order. */
static void image_bits(const plan_t *pl, const uint8_t *o, uint8_t *bits) {
    if (pl->bits_kind == BITS_MEAN) {
        const int64_t npx = (int64_t)pl->ow * pl->oh;
        int64_t sum = 0;
        for (int64_t i = 0; i < npx; i++)
            sum += o[i];
        for (int64_t i = 0; i < npx; i++)
            bits[i] = (uint8_t)(npx * o[i] > sum);
    } else if (pl->bits_kind == BITS_DIFF) {
        for (int y = 0; y < pl->oh; y++)
            for (int x = 0; x + 1 < pl->ow; x++)
                bits[(size_t)y * (pl->ow - 1) + x] =
                    (uint8_t)(o[(size_t)y * pl->ow + x + 1] > o[(size_t)y * pl->ow + x]);
    }
}

static size_t bits_per_image(const plan_t *pl) {
    if (pl->bits_kind == BITS_MEAN)
        return (size_t)pl->ow * pl->oh;
    return pl->bits_kind == BITS_DIFF ? (size_t)(pl->ow - 1) * pl->oh : 0;
}

static void one_image(const void *img, prefetch_t *pf, int mode, int c, int h, int w,
                      Py_ssize_t index, plan_t *plans, int nplans, int vnni, uint8_t *grey,
                      uint8_t *greyt, uint8_t *mid, uint8_t *fin) {
    const int hq = (h + 3) / 4, wg = (w + 3) / 4;
    int transposed = 0;
    for (int q = 0; q < hq; q++) {
#if HAVE_VNNI_BUILD
        if (vnni) {
            grey_quad_vnni(img, mode, c, h, w, q, grey + (size_t)q * wg * 16, pf);
            continue;
        }
#endif
        grey_quad_portable(img, mode, c, h, w, q, grey + (size_t)q * wg * 16, 0, pf);
    }
    for (int s = 0; s < nplans; s++) {
        plan_t *pl = &plans[s];
        uint8_t *out = pl->out + (size_t)index * pl->oh * pl->ow;
        if (pl->vfirst) {
            /* the grey with rows and columns swapped: unit (g, q) byte 4 i + r = unit (q, g)
             * byte 4 r + i; then the vertical pass, then the horizontal one */
            if (!transposed) {
                for (int q = 0; q < hq; q++)
                    for (int g = 0; g < wg; g++)
                        for (int r = 0; r < 4; r++)
                            for (int i = 0; i < 4; i++)
                                greyt[((size_t)g * hq + q) * 16 + 4 * i + r] =
                                    grey[((size_t)q * wg + g) * 16 + 4 * r + i];
                transposed = 1;
            }
            run_pass(greyt, wg, &pl->v, mid, vnni, pf);
            run_pass(mid, pl->v.nblocks, &pl->h, fin, vnni, pf);
            /* fin unit (column block bj, row block bi) lane 4 kk + r = column 4 bj + kk,
             * row 4 bi + r */
            for (int y = 0; y < pl->oh; y++)
                for (int x = 0; x < pl->ow; x++)
                    out[(size_t)y * pl->ow + x] =
                        fin[((size_t)(x / 4) * pl->v.nblocks + y / 4) * 16 + 4 * (x % 4) + y % 4];
            image_bits(pl, out, pl->bits + index * bits_per_image(pl));
            continue;
        }
        int cols;  /* column blocks of the horizontal result */
        if (pl->hskip) {
            /* mid unit (block g, quad q) lane 4 kk + r = grey unit (q, g) byte 4 r + kk */
            cols = wg;
            for (int q = 0; q < hq; q++)
                for (int g = 0; g < wg; g++)
                    for (int kk = 0; kk < 4; kk++)
                        for (int r = 0; r < 4; r++)
                            mid[((size_t)g * hq + q) * 16 + 4 * kk + r] =
                                grey[((size_t)q * wg + g) * 16 + 4 * r + kk];
        } else {
            cols = pl->h.nblocks;
            run_pass(grey, hq, &pl->h, mid, vnni, pf);
        }
        if (pl->vskip) {
            /* mid unit (b, q) lane 4 kk + r = row 4 q + r, column 4 b + kk */
            for (int y = 0; y < pl->oh; y++)
                for (int x = 0; x < pl->ow; x++)
                    out[(size_t)y * pl->ow + x] =
                        mid[((size_t)(x / 4) * hq + y / 4) * 16 + 4 * (x % 4) + y % 4];
            image_bits(pl, out, pl->bits + index * bits_per_image(pl));
            continue;
        }
        run_pass(mid, cols, &pl->v, fin, vnni, pf);
        /* fin unit (vertical block bi, column block b) lane 4 kk + r = row 4 bi + kk,
         * column 4 b + r: each output row takes 4 contiguous bytes from each unit */
        for (int y = 0; y < pl->oh; y++) {
            const uint8_t *src_row = fin + (size_t)(y / 4) * cols * 16 + 4 * (y % 4);
            uint8_t *orow = out + (size_t)y * pl->ow;
            for (int b = 0; 4 * b < pl->ow; b++) {
                const int left = pl->ow - 4 * b;
                memcpy(orow + 4 * b, src_row + (size_t)b * 16, left < 4 ? left : 4);
            }
        }
        image_bits(pl, out, pl->bits + index * bits_per_image(pl));
    }
}

/* resize(src, mode, n, c, h, w, plans, impl=0) -> None
 *
 * src: C-contiguous (n, c, h, w) buffer of uint8 (mode 0) or float32 (mode 1: values in
 * [0, 1]; mode 2: levels in [0, 255]); c is 1 or 3. plans: sequence of (ow, oh, kh, kv, out,
 * vfirst) with kh the (ow, w) int32 horizontal weights (None when ow == w), kv the (oh, h)
 * int32 vertical weights (None when oh == h), out a writable (n, oh, ow) uint8 buffer and
 * vfirst true where Pillow runs the vertical pass first; optionally then (bits, kind): a
 * writable buffer of n x (oh * ow) bytes for kind 1 (average_hash) or n x (oh * (ow - 1))
 * for kind 2 (dhash) that receives each image's imagehash bits as 0/1.
 * impl: 0 best available, 1 portable C, 2 AVX-512 VNNI (ValueError if the CPU lacks it). */
static PyObject *resize(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer src;
    int mode, c, h, w, impl = IMPL_AUTO;
    Py_ssize_t n;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "y*iniiiO|i", &src, &mode, &n, &c, &h, &w, &seq, &impl))
        return NULL;
    plan_t plans[MAX_PLANS];
    Py_buffer bufs[MAX_PLANS][4];
    int held[MAX_PLANS][4];
    int nplans = 0;
    PyObject *result = NULL, *fast = NULL;
    uint8_t *grey = NULL, *greyt = NULL, *mid = NULL, *fin = NULL;
    memset(plans, 0, sizeof(plans));
    memset(held, 0, sizeof(held));
    const size_t item = mode == MODE_U8 ? 1 : 4;
    int vnni = 0;
    if (mode < MODE_U8 || mode > MODE_LEVELS || (c != 1 && c != 3) || h < 1 || w < 1 || n < 0 ||
        h > (1 << 15) || w > (1 << 15)) {
        PyErr_SetString(PyExc_ValueError, "resize: bad mode or shape");
        goto done;
    }
    if ((size_t)src.len != (size_t)n * c * h * w * item) {
        PyErr_SetString(PyExc_ValueError, "resize: source size does not match its shape");
        goto done;
    }
    vnni = use_vnni(impl);
    if (impl == IMPL_VNNI && !vnni) {
        PyErr_SetString(PyExc_ValueError, "resize: this CPU has no AVX-512 VNNI");
        goto done;
    }
    fast = PySequence_Fast(seq, "resize: plans must be a sequence");
    if (!fast)
        goto done;
    if (PySequence_Fast_GET_SIZE(fast) > MAX_PLANS) {
        PyErr_SetString(PyExc_ValueError, "resize: too many output sizes");
        goto done;
    }
    size_t mid_bytes = 16, fin_bytes = 16;
    int any_vfirst = 0;
    const int hq = (h + 3) / 4, wg = (w + 3) / 4;
    for (; nplans < PySequence_Fast_GET_SIZE(fast); nplans++) {
        plan_t *pl = &plans[nplans];
        PyObject *kh_o, *kv_o, *out_o, *bits_o = Py_None;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, nplans), "iiOOOp|Oi", &pl->ow,
                              &pl->oh, &kh_o, &kv_o, &out_o, &pl->vfirst, &bits_o,
                              &pl->bits_kind))
            goto done;
        if (pl->bits_kind < BITS_NONE || pl->bits_kind > BITS_DIFF ||
            (pl->bits_kind == BITS_NONE) != (bits_o == Py_None)) {
            PyErr_SetString(PyExc_ValueError, "resize: bad bits kind or buffer");
            goto done;
        }
        if (pl->ow < 1 || pl->oh < 1 || pl->ow > (1 << 15) || pl->oh > (1 << 15)) {
            PyErr_SetString(PyExc_ValueError, "resize: bad output size");
            goto done;
        }
        pl->hskip = kh_o == Py_None;
        pl->vskip = kv_o == Py_None;
        if ((pl->hskip && pl->ow != w) || (pl->vskip && pl->oh != h)) {
            PyErr_SetString(PyExc_ValueError, "resize: a pass may only be skipped at equal size");
            goto done;
        }
        Py_buffer *b = bufs[nplans];
        if (PyObject_GetBuffer(out_o, &b[0], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        held[nplans][0] = 1;
        if ((size_t)b[0].len != (size_t)n * pl->oh * pl->ow) {
            PyErr_SetString(PyExc_ValueError, "resize: output buffer has the wrong size");
            goto done;
        }
        pl->out = b[0].buf;
        if (pl->bits_kind != BITS_NONE) {
            if (PyObject_GetBuffer(bits_o, &b[3], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
                goto done;
            held[nplans][3] = 1;
            if ((size_t)b[3].len != (size_t)n * bits_per_image(pl)) {
                PyErr_SetString(PyExc_ValueError, "resize: bits buffer has the wrong size");
                goto done;
            }
            pl->bits = b[3].buf;
        }
        if (!pl->hskip) {
            if (PyObject_GetBuffer(kh_o, &b[1], PyBUF_C_CONTIGUOUS) < 0)
                goto done;
            held[nplans][1] = 1;
            if ((size_t)b[1].len != sizeof(int32_t) * w * pl->ow) {
                PyErr_SetString(PyExc_ValueError, "resize: horizontal weights have the wrong size");
                goto done;
            }
            if (make_pass(&pl->h, b[1].buf, pl->ow, w) < 0) {
                PyErr_NoMemory();
                nplans++;
                goto done;
            }
        }
        if (!pl->vskip) {
            if (PyObject_GetBuffer(kv_o, &b[2], PyBUF_C_CONTIGUOUS) < 0) {
                nplans++;
                goto done;
            }
            held[nplans][2] = 1;
            if ((size_t)b[2].len != sizeof(int32_t) * h * pl->oh) {
                PyErr_SetString(PyExc_ValueError, "resize: vertical weights have the wrong size");
                nplans++;
                goto done;
            }
            if (make_pass(&pl->v, b[2].buf, pl->oh, h) < 0) {
                PyErr_NoMemory();
                nplans++;
                goto done;
            }
        }
        pl->vfirst = pl->vfirst && !pl->hskip && !pl->vskip;
        any_vfirst |= pl->vfirst;
        const int cols = pl->hskip ? wg : pl->h.nblocks;
        size_t m = (size_t)cols * hq * 16, f = (size_t)(pl->vskip ? 1 : pl->v.nblocks) * cols * 16;
        if (pl->vfirst) {
            m = (size_t)pl->v.nblocks * wg * 16;
            f = (size_t)pl->h.nblocks * pl->v.nblocks * 16;
        }
        mid_bytes = m > mid_bytes ? m : mid_bytes;
        fin_bytes = f > fin_bytes ? f : fin_bytes;
    }
    grey = aligned((size_t)hq * wg * 16);
    greyt = any_vfirst ? aligned((size_t)hq * wg * 16) : NULL;
    mid = aligned(mid_bytes);
    fin = aligned(fin_bytes);
    if (!grey || !mid || !fin || (any_vfirst && !greyt)) {
        PyErr_NoMemory();
        goto done;
    }
    const size_t stride = (size_t)c * h * w * item;
    Py_BEGIN_ALLOW_THREADS
    uint64_t per_image = 0;  /* the work of one image, as counted by tick */
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_t pf = {NULL, 0, 0, 0, 0};
        if (i + 1 < n && per_image) {
            pf.next = (const char *)src.buf + (i + 1) * stride;
            pf.lines = stride / 64 + 1;
            pf.rate = ((uint64_t)pf.lines << 16) / per_image + 1;
        }
        one_image((const char *)src.buf + i * stride, &pf, mode, c, h, w, i, plans, nplans,
                  vnni, grey, greyt, mid, fin);
        per_image = pf.work;
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(grey);
    free(greyt);
    free(mid);
    free(fin);
    for (int s = 0; s < MAX_PLANS; s++)
        for (int k = 0; k < 4; k++)
            if (held[s][k])
                PyBuffer_Release(&bufs[s][k]);
    for (int s = 0; s < nplans; s++) {
        free_pass(&plans[s].h);
        free_pass(&plans[s].v);
    }
    Py_XDECREF(fast);
    PyBuffer_Release(&src);
    return result;
}

static PyObject *has_vnni(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(use_vnni(IMPL_AUTO));
}

static PyMethodDef methods[] = {
    {"resize", resize, METH_VARARGS,
     "Pillow-exact grey conversion and LANCZOS resize of a batch of images."},
    {"has_vnni", has_vnni, METH_NOARGS, "Whether the AVX-512 VNNI kernel runs on this CPU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pillow", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pillow(void) { return PyModule_Create(&module); }
