/* σ_max of the lecture cells' step Jacobians, row by row, from their closed forms (see
 * keras_rnnx/_jacobian.py for the equations and the algorithm, which this file runs in C:
 * NumPy spends most of its time there on temporaries of small array operations).
 *
 * Plain C, no TensorFlow: keras_rnnx/_jacobian.py compiles it on first use and calls it with
 * ctypes on the arrays the probe fetched. Every row (one sample at one step) is independent:
 * its coefficients, Lanczos steps on JᵀJ with full reorthogonalisation (vectors in float32,
 * as the probe's states are), the top eigenpair of the tridiagonal matrix in double precision
 * (Laguerre's iteration, then inverse iteration) and the residual bound that certifies
 * it, checked after every second step so that a good start stops early. Products with R are
 * written as row updates (a·R row by row, and Rᵀ's rows for JᵀW), which vectorise without
 * reordering a sum; the dot products use `#pragma omp simd reduction` (compiled with
 * -fopenmp-simd: no OpenMP runtime, no threads).
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { VANILLA = 0, CEC = 1, ORIGINAL = 2, FORGET = 3 };

typedef struct {
  int kind, units, blocks, size;
  const float* recurrent;   /* R (units, blocks·units), row-major */
  const float* recurrent_t; /* Rᵀ (blocks·units, units), row-major */
  /* per row: */
  float* wide_c; /* (blocks, units): γ_k */
  float* eta;    /* (units): the output gate's η, or NULL */
  int eta_block;
  float* beta;   /* (units) */
  float* phi;    /* (units), or NULL for φ = 1 */
  float* da;     /* (blocks·units) scratch */
  float* dc;     /* (units) scratch */
} Row;

static float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

static void axpy(float a, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

/* out[0:cols] = Σ_r v[r] M[r, :] for M (rows, cols) row-major: 32 columns at a time in two
 * sets of register accumulators (even and odd rows), so that neither a store per row nor one
 * chain of dependent additions limits it. */
#define CHUNK 32
static void vector_times_matrix(const float* v, const float* m, int rows, int cols,
                                float* out) {
  int j = 0;
  for (; j + CHUNK <= cols; j += CHUNK) {
    float even[CHUNK] = {0}, odd[CHUNK] = {0};
    int r = 0;
    for (; r + 1 < rows; r += 2) {
      const float s0 = v[r], s1 = v[r + 1];
      const float* m0 = m + (size_t)r * cols + j;
      const float* m1 = m0 + cols;
#pragma omp simd
      for (int q = 0; q < CHUNK; ++q) {
        even[q] += s0 * m0[q];
        odd[q] += s1 * m1[q];
      }
    }
    if (r < rows) {
      const float s0 = v[r];
      const float* m0 = m + (size_t)r * cols + j;
#pragma omp simd
      for (int q = 0; q < CHUNK; ++q) even[q] += s0 * m0[q];
    }
#pragma omp simd
    for (int q = 0; q < CHUNK; ++q) out[j + q] = even[q] + odd[q];
  }
  if (j < cols) {
    const int rest = cols - j;
    for (int q = 0; q < rest; ++q) out[j + q] = 0.0f;
    for (int r = 0; r < rows; ++r) axpy(v[r], m + (size_t)r * cols + j, out + j, rest);
  }
}

/* J v. */
static void jv(const Row* r, const float* v, float* out) {
  const int u_n = r->units, width = r->blocks * u_n;
  float* da = r->da;
  vector_times_matrix(v, r->recurrent, u_n, width, da);
  if (r->kind == VANILLA) {
    for (int u = 0; u < u_n; ++u) out[u] = r->beta[u] * da[u];
    return;
  }
  float* dc = r->dc;
  for (int u = 0; u < u_n; ++u) dc[u] = r->phi ? r->phi[u] * v[u_n + u] : v[u_n + u];
  for (int k = 0; k < r->blocks; ++k) {
    const float* g = r->wide_c + (size_t)k * u_n;
    const float* a = da + (size_t)k * u_n;
    for (int u = 0; u < u_n; ++u) dc[u] += g[u] * a[u];
  }
  for (int u = 0; u < u_n; ++u) {
    float dh = r->beta[u] * dc[u];
    if (r->eta) dh += r->eta[u] * da[(size_t)r->eta_block * u_n + u];
    out[u] = dh;
    out[u_n + u] = dc[u];
  }
}

/* Jᵀ w. */
static void jtv(const Row* r, const float* w, float* out) {
  const int u_n = r->units, width = r->blocks * u_n;
  float* da = r->da;
  if (r->kind == VANILLA) {
    for (int u = 0; u < u_n; ++u) da[u] = r->beta[u] * w[u];
  } else {
    float* dc = r->dc;
    for (int u = 0; u < u_n; ++u) dc[u] = w[u_n + u] + r->beta[u] * w[u];
    for (int k = 0; k < r->blocks; ++k) {
      const float* g = r->wide_c + (size_t)k * u_n;
      float* a = da + (size_t)k * u_n;
      for (int u = 0; u < u_n; ++u) a[u] = g[u] * dc[u];
    }
    if (r->eta)
      for (int u = 0; u < u_n; ++u) da[(size_t)r->eta_block * u_n + u] += r->eta[u] * w[u];
    for (int u = 0; u < u_n; ++u) out[u_n + u] = r->phi ? r->phi[u] * dc[u] : dc[u];
  }
  vector_times_matrix(da, r->recurrent_t, width, u_n, out);
}

/* The largest eigenvalue θ of the symmetric tridiagonal T (alpha, beta: k, k-1) and a unit
 * eigenvector y. θ: Laguerre's iteration on p(x) = det(T − xI) from the Gershgorin upper
 * bound, which for a polynomial with real roots converges monotonically from above to the
 * largest root (cubically where it is simple); p'/p and (p'/p)' come from the pivots d_j of
 * the LDLᵀ factorisation of T − xI and their derivatives, one division per row of T. y: two
 * steps of inverse iteration shifted just above θ (T − σI is negative definite there: the
 * tridiagonal solve needs no pivoting), then θ as the Rayleigh quotient of y (its error is
 * the square of y's). Where λ_1 and λ_2 nearly coincide, y mixes their eigenvectors and the
 * residual bound says how well. scratch: 2k doubles. Returns NaN where T is not finite. */
static double top_eigenpair(const double* alpha, const double* beta, int k, double* y,
                            double* scratch) {
  double hi = -INFINITY, scale = 0.0;
  for (int j = 0; j < k; ++j) {
    const double radius = (j > 0 ? fabs(beta[j - 1]) : 0.0) + (j < k - 1 ? fabs(beta[j]) : 0.0);
    hi = fmax(hi, alpha[j] + radius);
    scale = fmax(scale, fabs(alpha[j]) + radius);
  }
  if (!isfinite(hi)) return NAN;
  double x = hi + 1e-12 * scale + 1e-300;
  for (int it = 0; it < 60 && k > 1; ++it) {
    double d = 1.0, d1 = 0.0, d2 = 0.0, g = 0.0, h = 0.0;
    for (int j = 0; j < k; ++j) {
      double nd, nd1, nd2;
      if (j == 0) {
        nd = alpha[0] - x;
        nd1 = -1.0;
        nd2 = 0.0;
      } else {
        if (d == 0.0) d = -1e-300;
        const double b2 = beta[j - 1] * beta[j - 1], inv = 1.0 / d;
        nd = (alpha[j] - x) - b2 * inv;
        nd1 = -1.0 + b2 * d1 * inv * inv;
        nd2 = b2 * (d2 * d - 2.0 * d1 * d1) * inv * inv * inv;
      }
      d = nd;
      d1 = nd1;
      d2 = nd2;
      if (d == 0.0) d = -1e-300;
      const double ratio = d1 / d;
      g += ratio;                /* p'/p = Σ 1/(x − λ_i), > 0 above every root */
      h += ratio * ratio - d2 / d; /* −(p'/p)' = Σ 1/(x − λ_i)² */
    }
    const double n = (double)k;
    const double root = sqrt(fmax((n - 1.0) * (n * h - g * g), 0.0));
    const double denominator = g + (g >= 0.0 ? root : -root);
    if (!(denominator != 0.0) || !isfinite(denominator)) break;
    const double step = n / denominator;
    if (!isfinite(step)) break;
    x -= step;
    if (fabs(step) <= 1e-15 * scale + 1e-300) break;
  }
  if (k == 1) x = alpha[0];
  const double sigma = x + 1e-13 * scale + 1e-300;
  double* c = scratch;
  double* dd = scratch + k;
  for (int j = 0; j < k; ++j) y[j] = 1.0;
  for (int pass = 0; pass < 2; ++pass) {
    /* Thomas algorithm for (T - σI) x = y. */
    double denom = alpha[0] - sigma;
    c[0] = k > 1 ? beta[0] / denom : 0.0;
    dd[0] = y[0] / denom;
    for (int j = 1; j < k; ++j) {
      denom = (alpha[j] - sigma) - beta[j - 1] * c[j - 1];
      c[j] = j < k - 1 ? beta[j] / denom : 0.0;
      dd[j] = (y[j] - beta[j - 1] * dd[j - 1]) / denom;
    }
    y[k - 1] = dd[k - 1];
    for (int j = k - 2; j >= 0; --j) y[j] = dd[j] - c[j] * y[j + 1];
    double norm = 0.0;
    for (int j = 0; j < k; ++j) norm += y[j] * y[j];
    norm = sqrt(norm);
    if (!(norm > 0.0) || !isfinite(norm)) return NAN;
    for (int j = 0; j < k; ++j) y[j] /= norm;
  }
  double theta = 0.0;
  for (int j = 0; j < k; ++j) {
    double ty = alpha[j] * y[j];
    if (j > 0) ty += beta[j - 1] * y[j - 1];
    if (j < k - 1) ty += beta[j] * y[j + 1];
    theta += y[j] * ty;
  }
  return theta;
}

/* ‖A Qy − θ Qy‖ ≤ ‖(T − θ)y‖ + β_k |y_k| for the Ritz pair (θ, Qy) after k steps (A Q =
 * Q T + β_k q_{k+1} e_kᵀ): the bound that certifies θ (an eigenvalue of A lies that close). */
static double residual_bound(const double* alpha, const double* beta, int k, double theta,
                             const double* y, double tail) {
  double residual = 0.0;
  for (int j = 0; j < k; ++j) {
    double ty = alpha[j] * y[j] - theta * y[j];
    if (j > 0) ty += beta[j - 1] * y[j - 1];
    if (j < k - 1) ty += beta[j] * y[j + 1];
    residual += ty * ty;
  }
  return sqrt(residual) + tail * fabs(y[k - 1]);
}

typedef struct {
  float* basis;    /* (steps_max + 1, size) */
  float* w;        /* (size) */
  float* tmp;      /* (size) */
  double* alpha;   /* (steps_max) */
  double* beta;    /* (steps_max) */
  double* y;       /* (steps_max) */
  double* scratch; /* 2·steps_max */
  float* coeff;    /* (steps_max) */
} Work;

/* Lanczos on JᵀJ from the unit vector `start`, at most `steps` steps: θ (the top Ritz value),
 * whether the residual bound certifies it (or the Krylov space is invariant or the whole
 * space), and the unit Ritz vector in ritz (size; may be `start`'s buffer). */
static double lanczos(const Row* r, const float* start, int steps, double tol, Work* wk,
                      int* certified, float* ritz) {
  const int s_n = r->size;
  memcpy(wk->basis, start, sizeof(float) * s_n);
  int k = 0;
  double theta = NAN;
  *certified = 0;
  for (int j = 0; j < steps; ++j) {
    float* qj = wk->basis + (size_t)j * s_n;
    float* w = wk->w;
    jv(r, qj, wk->tmp);
    jtv(r, wk->tmp, w);
    const float a = dot(w, qj, s_n);
    axpy(-a, qj, w, s_n);
    if (j > 0) axpy(-(float)wk->beta[j - 1], qj - s_n, w, s_n);
    /* Classical Gram-Schmidt against every basis vector; a second pass only where the first
     * removed most of w (Daniel, Gragg, Kaufman & Stewart's criterion: ‖w‖ fell below 1/√2 of
     * its length before), since then rounding leaves w measurably unorthogonal. */
    double before = dot(w, w, s_n), b2 = before;
    for (int pass = 0; pass < 2; ++pass) {
      for (int m = 0; m <= j; ++m) wk->coeff[m] = -dot(wk->basis + (size_t)m * s_n, w, s_n);
      vector_times_matrix(wk->coeff, wk->basis, j + 1, s_n, wk->tmp);
#pragma omp simd
      for (int i = 0; i < s_n; ++i) w[i] += wk->tmp[i];
      b2 = dot(w, w, s_n);
      if (b2 > 0.5 * before) break;
      before = b2;
    }
    const double b = sqrt(b2);
    wk->alpha[j] = a;
    wk->beta[j] = b;
    k = j + 1;
    if (!isfinite(a) || !isfinite(b)) return NAN;
    const int invariant = !(b > 1e-30 * fabs(a) + 1e-37);
    const int last = invariant || k == steps || k == s_n;
    if (last || (k >= 2 && k % 2 == 0)) {
      theta = top_eigenpair(wk->alpha, wk->beta, k, wk->y, wk->scratch);
      if (!isfinite(theta)) return NAN;
      const double tail = invariant ? 0.0 : b;
      if (invariant || k == s_n ||
          residual_bound(wk->alpha, wk->beta, k, theta, wk->y, tail) <= tol * fmax(theta, 0.0)) {
        *certified = 1;
        break;
      }
      if (last) break;
    }
    const float inv = (float)(1.0 / b);
    float* qn = qj + s_n;
    for (int i = 0; i < s_n; ++i) qn[i] = w[i] * inv;
  }
  memset(wk->tmp, 0, sizeof(float) * s_n);
  for (int j = 0; j < k; ++j) axpy((float)wk->y[j], wk->basis + (size_t)j * s_n, wk->tmp, s_n);
  const double norm = sqrt((double)dot(wk->tmp, wk->tmp, s_n));
  for (int i = 0; i < s_n; ++i) ritz[i] = norm > 0.0 ? (float)(wk->tmp[i] / norm) : 0.0f;
  return theta;
}

/* The warm start: `in` (a previous Ritz vector) plus WARM_MIX of the cold start, normalised.
 * The cold part keeps every direction in the Krylov space: should the eigenvalues have
 * changed order since `in` was computed (it now lies along λ_2's vector), the steps still
 * find λ_1 instead of certifying λ_2 from a start with no component along λ_1's vector.
 * Returns 0 where `in` is zero or not finite. */
#define WARM_MIX 0.05f
static int warm_start(const float* in, const float* cold, float* out, int n) {
  double norm = 0.0;
  for (int i = 0; i < n; ++i) norm += (double)in[i] * in[i];
  norm = sqrt(norm);
  if (!(norm > 0.0) || !isfinite(norm)) return 0;
  double total = 0.0;
  for (int i = 0; i < n; ++i) {
    out[i] = (float)(in[i] / norm) + WARM_MIX * cold[i];
    total += (double)out[i] * out[i];
  }
  total = sqrt(total);
  for (int i = 0; i < n; ++i) out[i] = (float)(out[i] / total);
  return 1;
}

/* For each kept row n: σ_max² of its step Jacobian in theta[n] and certified[n] (1 or 0: the
 * caller solves uncertified rows exactly; θ NaN where J is not finite), its unit Ritz vector
 * in ritz (rows, size). Inputs, float32 row-major: R (units, blocks·units); gates (rows,
 * blocks·units) in block order (NULL for vanilla); c_prev, h, c (rows, units; c_prev and c
 * NULL where the cell does not use them); start (rows, size) or NULL; cold (size) the fixed
 * cold start. Steps: up to warm_steps from a usable start, then up to cold_steps from `cold`,
 * then up to restart_steps from that run's Ritz vector, each stopping once certified.
 * Returns 0, or -1 when out of memory. */
int rnnx_jacobian_norms(int kind, int rows, int units, const float* recurrent,
                        const float* gates, const float* c_prev, const float* h,
                        const float* c, const unsigned char* keep, const float* start,
                        const float* cold, int warm_steps, int cold_steps, int restart_steps,
                        double tol, double* theta, unsigned char* certified, float* ritz) {
  const int blocks = kind == FORGET ? 4 : kind == ORIGINAL ? 3 : 1;
  const int size = kind == VANILLA ? units : 2 * units;
  const int width = blocks * units;
  int steps_max = warm_steps;
  if (cold_steps > steps_max) steps_max = cold_steps;
  if (restart_steps > steps_max) steps_max = restart_steps;
  if (steps_max > size) steps_max = size;
  if (steps_max < 1) steps_max = 1;
  const size_t floats = (size_t)width * units + (size_t)width * 2 + (size_t)units * 4 +
                        (size_t)(steps_max + 1) * size + (size_t)size * 5 + steps_max;
  float* mem = (float*)calloc(floats, sizeof(float));
  double* dmem = (double*)calloc((size_t)steps_max * 5, sizeof(double));
  if (!mem || !dmem) {
    free(mem);
    free(dmem);
    return -1;
  }
  float* p = mem;
  float* recurrent_t = p; p += (size_t)width * units;
  for (int u = 0; u < units; ++u)
    for (int j = 0; j < width; ++j) recurrent_t[(size_t)j * units + u] = recurrent[(size_t)u * width + j];
  Row r = {kind, units, blocks, size, recurrent, recurrent_t};
  r.wide_c = p; p += width;
  r.da = p; p += width;
  float* eta = p; p += units;
  r.beta = p; p += units;
  float* phi = p; p += units;
  r.dc = p; p += units;
  Work wk;
  wk.basis = p; p += (size_t)(steps_max + 1) * size;
  wk.w = p; p += size;
  wk.tmp = p; p += size;
  float* vec = p; p += size;
  float* best = p; p += size;
  float* cand = p; p += size;
  wk.coeff = p; p += steps_max;
  wk.alpha = dmem;
  wk.beta = dmem + steps_max;
  wk.y = dmem + 2 * steps_max;
  wk.scratch = dmem + 3 * steps_max;

  for (int n = 0; n < rows; ++n) {
    theta[n] = NAN;
    certified[n] = 0;
    float* out = ritz + (size_t)n * size;
    memset(out, 0, sizeof(float) * size);
    if (!keep[n]) continue;
    const float* g = gates ? gates + (size_t)n * width : NULL;
    const float* hn = h + (size_t)n * units;
    int finite = 1;
    r.eta = NULL;
    r.phi = NULL;
    r.eta_block = 0;
    if (kind == VANILLA) {
      for (int u = 0; u < units; ++u) r.beta[u] = 1.0f - hn[u] * hn[u];
    } else if (kind == CEC) {
      for (int u = 0; u < units; ++u) {
        r.wide_c[u] = 1.0f - g[u] * g[u];
        r.beta[u] = 1.0f - hn[u] * hn[u];
      }
    } else {
      const float* cn = c + (size_t)n * units;
      const int i_b = 0, f_b = 1, z_b = kind == FORGET ? 2 : 1, o_b = kind == FORGET ? 3 : 2;
      r.eta = eta;
      r.eta_block = o_b;
      for (int u = 0; u < units; ++u) {
        const float i = g[(size_t)i_b * units + u], z = g[(size_t)z_b * units + u];
        const float o = g[(size_t)o_b * units + u], tc = tanhf(cn[u]);
        r.wide_c[(size_t)i_b * units + u] = z * i * (1.0f - i);
        r.wide_c[(size_t)z_b * units + u] = i * (1.0f - z * z);
        r.wide_c[(size_t)o_b * units + u] = 0.0f;
        eta[u] = tc * o * (1.0f - o);
        r.beta[u] = o * (1.0f - tc * tc);
        if (kind == FORGET) {
          const float f = g[(size_t)f_b * units + u];
          r.wide_c[(size_t)f_b * units + u] = c_prev[(size_t)n * units + u] * f * (1.0f - f);
          phi[u] = f;
        }
      }
      if (kind == FORGET) r.phi = phi;
    }
    for (int j = 0; j < width && finite; ++j) finite = isfinite(r.wide_c[j]);
    for (int u = 0; u < units && finite; ++u)
      finite = isfinite(r.beta[u]) && (!r.eta || isfinite(eta[u])) &&
               (!r.phi || isfinite(phi[u]));
    if (!finite) continue; /* J is not finite: the caller's exact path says NaN */

    /* Ritz values are lower bounds of λ_max: each run keeps the larger value. */
    double value = -INFINITY;
    int ok = 0;
    if (start && warm_steps > 0 && warm_start(start + (size_t)n * size, cold, vec, size)) {
      const double t = lanczos(&r, vec, warm_steps < size ? warm_steps : size, tol, &wk, &ok,
                               cand);
      ok = ok && isfinite(t);
      if (isfinite(t)) {
        value = t;
        memcpy(best, cand, sizeof(float) * size);
      }
    }
    if (!ok) {
      const double t = lanczos(&r, cold, cold_steps < size ? cold_steps : size, tol, &wk, &ok,
                               cand);
      ok = ok && isfinite(t);
      if (isfinite(t) && t >= value) {
        value = t;
        memcpy(best, cand, sizeof(float) * size);
      }
      if (!ok && isfinite(t) && restart_steps > 0 && cold_steps < size) {
        const double t2 = lanczos(&r, cand, restart_steps < size ? restart_steps : size, tol,
                                  &wk, &ok, cand);
        ok = ok && isfinite(t2);
        if (isfinite(t2) && t2 >= value) {
          value = t2;
          memcpy(best, cand, sizeof(float) * size);
        }
      }
    }
    if (!isfinite(value)) continue;
    theta[n] = value;
    certified[n] = (unsigned char)ok;
    memcpy(out, best, sizeof(float) * size);
  }
  free(mem);
  free(dmem);
  return 0;
}
