/* The integrator driver of the compiled route (nimm_dsl/backends/compiled.py): an explicit
   embedded Runge-Kutta pair of the GNU Scientific Library (the default), and CVODES (Adams or
   BDF, dense linear solver, our Jacobian where there is one) for stiff problems or on request.

   It is compiled apart from the C code that CasADi generates for the model (compiled.py: that
   code's optimisation depends on its size, this file's does not) and linked with it, after the
   declarations of the generated functions: nimm_rhs(t, x, p, u) -> dx/dt,
   where u holds the rows of the model's matrix products (compiler/linear_forms.py), which
   nimm_products (generated after this file) computes first: each product's vector by
   nimm_vec_<k>(t, x, p, u), then the product in the loops below, the matrix a static table or
   the outputs of nimm_entries(p); where NIMM_JAC_NNZ is defined (no products, a sparse
   Jacobian: compiled.generates_jacobian), nimm_jac(t, x, p, u) -> the structural nonzeros of
   d(dx/dt)/dx (their places in the dense column-major matrix: nimm_jac_at), else CVODES takes
   difference quotients; and nimm_out (the
   outputs). NIMM_NX states, NIMM_NU product rows, NIMM_NV the longest product vector, NIMM_NE
   entries and the NIMM_SZ_* work sizes are defined before this file. One call integrates one
   segment, stopping exactly at its last output time. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cvodes/cvodes.h>
#include <nvector/nvector_serial.h>
#include <sunmatrix/sunmatrix_dense.h>
#include <sunlinsol/sunlinsol_dense.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_odeiv2.h>

typedef struct {
  const double *p;
  const casadi_real *arg[NIMM_SZ_ARG];
  casadi_real *res[NIMM_SZ_RES];
  casadi_int iw[NIMM_SZ_IW + 1];
  casadi_real w[NIMM_SZ_W + 1];
  casadi_real u[NIMM_NU + 1];       /* the products' rows at the current evaluation */
  casadi_real v[NIMM_NV + 1];       /* one product's vector */
  casadi_real entries[NIMM_NE + 1]; /* the matrices of params and consts, for this segment */
#ifdef NIMM_JAC_NNZ
  casadi_real jac[NIMM_JAC_NNZ + 1];
#endif
} nimm_work;

/* u = M v where some v[j] is NaN or inf: only the rows holding an entry in such a column
   (`present`: a bit per entry, column-major; NULL: every entry) read it, as in the compressed
   rows and CasADi's sparse product; a stored 0 that is no entry must not make 0 * NaN = NaN. */
static void nimm_dense_product_nonfinite(int n_rows, int n_cols, const double *m,
                                         const unsigned char *present, const double *v, double *u) {
  for (int i = 0; i < n_rows; i++) u[i] = 0.0;
  for (int j = 0; j < n_cols; j++) {
    const double vj = v[j], *col = m + (long)j * n_rows;
    const int finite = vj - vj == 0.0;
    for (int i = 0; i < n_rows; i++) {
      const long at = (long)j * n_rows + i;
      if (finite || !present || (present[at >> 3] >> (at & 7) & 1)) u[i] += col[i] * vj;
    }
  }
}

/* u = M v, M n_rows x n_cols stored column by column: four columns at a time added into u, a
   loop gcc -O2 vectorises (inlined with the sizes as constants) and which reads and writes u a
   quarter as often as one column at a time. A dense 100 x 100 product takes 1.4-2 us here
   (one column at a time: 3 us), where CasADi's generic sparse kernel reads an index per
   entry. A vector with a NaN or inf (one pass over v to find out) takes the loop above. */
static inline void nimm_dense_product(int n_rows, int n_cols, const double *restrict m,
                                      const unsigned char *present, const double *restrict v,
                                      double *restrict u) {
  int j = 0;
  for (; j < n_cols && v[j] - v[j] == 0.0; j++) {}
  if (j < n_cols) {
    nimm_dense_product_nonfinite(n_rows, n_cols, m, present, v, u);
    return;
  }
  j = 0;
  for (int i = 0; i < n_rows; i++) u[i] = 0.0;
  for (; j + 4 <= n_cols; j += 4) {
    const double v0 = v[j], v1 = v[j + 1], v2 = v[j + 2], v3 = v[j + 3];
    const double *restrict c0 = m + (long)j * n_rows, *restrict c1 = c0 + n_rows,
                 *restrict c2 = c1 + n_rows, *restrict c3 = c2 + n_rows;
    for (int i = 0; i < n_rows; i++) u[i] += c0[i] * v0 + c1[i] * v1 + c2[i] * v2 + c3[i] * v3;
  }
  for (; j < n_cols; j++) {
    const double vj = v[j], *restrict col = m + (long)j * n_rows;
    for (int i = 0; i < n_rows; i++) u[i] += col[i] * vj;
  }
}

/* u = M v, M by compressed rows: row i's values m[start[i] .. start[i + 1]) in columns col[.] */
static inline void nimm_sparse_product(int n_rows, const int *start, const int *col,
                                       const double *restrict m, const double *restrict v,
                                       double *restrict u) {
  for (int i = 0; i < n_rows; i++) {
    double s = 0.0;
    for (int k = start[i]; k < start[i + 1]; k++) s += m[k] * v[col[k]];
    u[i] = s;
  }
}

static int nimm_products(nimm_work *wk); /* generated after this file */

/* A work area for one segment with parameters p (NULL when out of memory or if the matrix
   entries fail to evaluate). */
static nimm_work *nimm_work_new(const double *p) {
  nimm_work *wk = (nimm_work *)calloc(1, sizeof(nimm_work));
  if (!wk) return NULL;
  wk->p = p;
  wk->arg[0] = p;
  wk->res[0] = wk->entries;
  if (nimm_entries(wk->arg, wk->res, wk->iw, wk->w, 0)) {
    free(wk);
    return NULL;
  }
  return wk;
}

/* dx/dt at (t, x): the products, then the rest of the right-hand side. Nonzero on an error. */
static int nimm_eval(nimm_work *wk, double t, const double *x, double *dx) {
  wk->arg[0] = &t;
  wk->arg[1] = x;
  wk->arg[2] = wk->p;
  wk->arg[3] = wk->u;
  if (nimm_products(wk)) return 1;
  wk->res[0] = dx;
  return nimm_rhs(wk->arg, wk->res, wk->iw, wk->w, 0);
}

static int all_finite(const double *v, long n) {
  for (long i = 0; i < n; i++)
    if (!(v[i] - v[i] == 0.0)) return 0; /* false for NaN and inf */
  return 1;
}

static int nimm_f(sunrealtype t, N_Vector x, N_Vector dx, void *user) {
  if (nimm_eval((nimm_work *)user, t, N_VGetArrayPointer(x), N_VGetArrayPointer(dx))) return -1;
  /* a NaN or inf derivative is recoverable: CVODES retries with a smaller step, and fails with
     a flag if that never helps */
  return all_finite(N_VGetArrayPointer(dx), NIMM_NX) ? 0 : 1;
}

#ifdef NIMM_JAC_NNZ
static int nimm_j(sunrealtype t, N_Vector x, N_Vector fx, SUNMatrix J, void *user,
                  N_Vector t1, N_Vector t2, N_Vector t3) {
  nimm_work *wk = (nimm_work *)user;
  double tt = t;
  (void)fx; (void)t1; (void)t2; (void)t3;
  wk->arg[0] = &tt;
  wk->arg[1] = N_VGetArrayPointer(x);
  wk->arg[2] = wk->p;
  wk->arg[3] = wk->u; /* empty: a model with products has no generated Jacobian */
  wk->res[0] = wk->jac;
  if (nimm_jac(wk->arg, wk->res, wk->iw, wk->w, 0)) return -1;
  /* the nonzeros into the dense matrix: a dense Jacobian in the generated code would be n^2
     assignments for gcc to compile */
  double *dense = SUNDenseMatrix_Data(J);
  memset(dense, 0, sizeof(double) * NIMM_NX * NIMM_NX);
  for (long k = 0; k < NIMM_JAC_NNZ; k++) dense[nimm_jac_at[k]] = wk->jac[k];
  return all_finite(wk->jac, NIMM_JAC_NNZ) ? 0 : 1;
}
#endif

static void nimm_silent(int code, const char *module, const char *function, char *msg, void *data) {
  (void)code; (void)module; (void)function; (void)msg; (void)data; /* the caller reports */
}

/* CVODES from (t0, x0) to grid[0..n_grid-1] (increasing, > t0), writing the states at each grid
   time into out[k * NIMM_NX + i]. lmm: CV_ADAMS (1) or CV_BDF (2). Returns 0 on success, else the
   CVODES flag (negative) with *t_reached the time the solver got to. */
static int cvodes_solve(double t0, const double *grid, int n_grid, const double *x0, const double *p,
               double rtol, double atol, long max_steps, int lmm, double *out, double *t_reached) {
  SUNContext ctx = NULL;
  N_Vector x = NULL, dky = NULL;
  SUNMatrix A = NULL;
  SUNLinearSolver LS = NULL;
  void *mem = NULL;
  int flag = -100;
  double t = t0;
  nimm_work *wk = nimm_work_new(p);
  *t_reached = t0;
  if (!wk || SUNContext_Create(NULL, &ctx)) goto done;
  x = N_VNew_Serial(NIMM_NX, ctx);
  dky = N_VMake_Serial(NIMM_NX, out, ctx); /* a view: its data pointer moves along `out` */
  A = SUNDenseMatrix(NIMM_NX, NIMM_NX, ctx);
  mem = CVodeCreate(lmm, ctx);
  if (!x || !dky || !A || !mem) goto done;
  memcpy(N_VGetArrayPointer(x), x0, sizeof(double) * NIMM_NX);
  LS = SUNLinSol_Dense(x, A, ctx);
  if (!LS) goto done;
  CVodeSetErrHandlerFn(mem, nimm_silent, NULL);
  if ((flag = CVodeInit(mem, nimm_f, t0, x)) < 0) goto done;
  if ((flag = CVodeSStolerances(mem, rtol, atol)) < 0) goto done;
  if ((flag = CVodeSetUserData(mem, wk)) < 0) goto done;
  if ((flag = CVodeSetMaxNumSteps(mem, max_steps)) < 0) goto done;
  if ((flag = CVodeSetStopTime(mem, grid[n_grid - 1])) < 0) goto done;
  if ((flag = CVodeSetLinearSolver(mem, LS, A)) < 0) goto done;
#ifdef NIMM_JAC_NNZ
  if ((flag = CVodeSetJacFn(mem, nimm_j)) < 0) goto done;
#endif
  /* one step at a time, interpolating every output time the step passed: cheaper than one
     CV_NORMAL call per output time (same interpolant); max_steps counts steps between outputs */
  for (int k = 0, steps = 0; k < n_grid;) {
    flag = CVode(mem, grid[n_grid - 1], x, &t, CV_ONE_STEP);
    *t_reached = t;
    if (flag < 0) goto done;
    if (++steps > max_steps) { flag = CV_TOO_MUCH_WORK; goto done; }
    for (; k < n_grid && grid[k] <= t; k++, steps = 0) {
      N_VSetArrayPointer(out + (long)k * NIMM_NX, dky);
      if ((flag = CVodeGetDky(mem, grid[k], 0, dky)) < 0) goto done;
    }
  }
  flag = 0;
done:
  if (mem) CVodeFree(&mem);
  if (LS) SUNLinSolFree(LS);
  if (A) SUNMatDestroy(A);
  if (x) N_VDestroy(x);
  if (dky) N_VDestroy(dky);
  if (ctx) SUNContext_Free(&ctx);
  free(wk);
  return flag;
}

/* ------------------------------------------------------------------ GSL explicit Runge-Kutta
   An embedded explicit pair of GSL's gsl_odeiv2 (its evolve/control/step API on plain arrays,
   error control D = atol + rtol |y| like CVODES). GSL has no dense output, so the outputs come
   from the pair itself in one of two ways, chosen before each step:
   - where the proposed step spans NIMM_FREE_SPAN or more output times, the step is taken freely
     (towards the segment's end) and each output time inside it is one step of the same pair
     from the accepted step's start, its first stage shared: a shorter step from the same point
     than the accepted one, so no less accurate, and no error control or step-size update;
   - elsewhere the step stops exactly at the next output time (a truncated step leaves GSL's
     proposed size as it was, so the choice is made again at every step).
   With 1000 outputs on SIR at 1e-8 the first replaces 1000 truncated, error-controlled steps by
   about 130 free ones plus 1000 bare steps: 25% less time (benchmarks/README.md).
   GSL exposes no stiffness estimate, so the hand-over starts from a step budget: after
   NIMM_STIFF_STEPS steps between two output times the step size h is compared with the spectral
   radius rho of the Jacobian (power iteration on difference quotients, `spectral_radius`): where
   h rho reaches NIMM_STIFF_RATIO the pair is held back by its stability region (it ends near 3
   on the negative real axis for these pairs, while an accuracy-limited step stays well inside),
   and the segment goes on from there with CVODES BDF; otherwise another NIMM_STIFF_STEPS steps
   follow, and at the step limit BDF takes over all the same. Without the comparison a long non-stiff segment (a 100-district epidemic over a year
   with no output between) went to BDF: 392 ms instead of ~30 ms. */
#define NIMM_STIFF 1 /* returned by gsl_solve when the problem looks stiff */
#define NIMM_STIFF_STEPS 500
#define NIMM_STIFF_RATIO 2.0
#define NIMM_POWER_ITERATIONS 20
#ifndef NIMM_FREE_SPAN /* -DNIMM_FREE_SPAN=1000000000: always stop at outputs (benchmarks) */
#define NIMM_FREE_SPAN 2
#endif

static int gsl_f(double t, const double *x, double *dx, void *user) {
  if (nimm_eval((nimm_work *)user, t, x, dx)) return GSL_EBADFUNC;
  /* a NaN or inf derivative: GSL retries the step with a smaller size */
  return all_finite(dx, NIMM_NX) ? GSL_SUCCESS : GSL_FAILURE;
}

/* An estimate of the spectral radius of d(dx/dt)/dx at (t, y): power iteration on difference
   quotients of the right-hand side, starting from the direction of motion. Negative on an error
   of the right-hand side. */
static double spectral_radius(nimm_work *wk, double t, const double *y) {
  double f0[NIMM_NX], v[NIMM_NX], yp[NIMM_NX], fp[NIMM_NX], norm = 0, ynorm = 0, rho = 0;
  if (gsl_f(t, y, f0, wk) != GSL_SUCCESS) return -1;
  for (int i = 0; i < NIMM_NX; i++) {
    norm += f0[i] * f0[i];
    ynorm += y[i] * y[i];
  }
  norm = sqrt(norm);
  for (int i = 0; i < NIMM_NX; i++) v[i] = norm > 0 ? f0[i] / norm : 1 / sqrt((double)NIMM_NX);
  const double delta = 1.5e-8 * (1 + sqrt(ynorm)); /* about sqrt(machine epsilon), scaled */
  for (int it = 0; it < NIMM_POWER_ITERATIONS; it++) {
    for (int i = 0; i < NIMM_NX; i++) yp[i] = y[i] + delta * v[i];
    if (gsl_f(t, yp, fp, wk) != GSL_SUCCESS) return -1;
    rho = 0;
    for (int i = 0; i < NIMM_NX; i++) {
      v[i] = (fp[i] - f0[i]) / delta;
      rho += v[i] * v[i];
    }
    rho = sqrt(rho);
    if (rho == 0) return 0;
    for (int i = 0; i < NIMM_NX; i++) v[i] /= rho;
  }
  return rho;
}

static int gsl_solve(const gsl_odeiv2_step_type *type, nimm_work *wk, double *t_io, double *y,
                     const double *grid, int n_grid, double rtol, double atol, long max_steps,
                     double *out, int *k_done) {
  gsl_odeiv2_system sys = {gsl_f, NULL, NIMM_NX, wk};
  gsl_odeiv2_step *step = gsl_odeiv2_step_alloc(type, NIMM_NX);
  gsl_odeiv2_step *partial = gsl_odeiv2_step_alloc(type, NIMM_NX); /* outputs inside a free step */
  gsl_odeiv2_control *control = gsl_odeiv2_control_standard_new(atol, rtol, 1.0, 0.0);
  gsl_odeiv2_evolve *evolve = gsl_odeiv2_evolve_alloc(NIMM_NX);
  double t = *t_io, h, t_start, y_start[NIMM_NX], f_start[NIMM_NX], y_err[NIMM_NX];
  int k = 0, flag = 0;
  const long first_budget = max_steps < NIMM_STIFF_STEPS ? max_steps : NIMM_STIFF_STEPS;
  long steps = 0, budget = first_budget;
  if (!step || !partial || !control || !evolve) { flag = -100; goto done; }
  gsl_odeiv2_step_set_driver(step, NULL);
  gsl_odeiv2_step_set_driver(partial, NULL);
  { /* initial step: the first-order guess of Hairer's hinit, limited by the span */
    double f0[NIMM_NX], d0 = 0, d1 = 0, sk;
    if (gsl_f(t, y, f0, wk) != GSL_SUCCESS) { flag = CV_RHSFUNC_FAIL; goto done; }
    for (int i = 0; i < NIMM_NX; i++) {
      sk = atol + rtol * fabs(y[i]);
      d0 += (y[i] / sk) * (y[i] / sk);
      d1 += (f0[i] / sk) * (f0[i] / sk);
    }
    h = (d0 <= 1e-10 || d1 <= 1e-10) ? 1e-6 : 0.01 * sqrt(d0 / d1);
    if (h > grid[n_grid - 1] - t) h = grid[n_grid - 1] - t;
  }
  while (k < n_grid) {
    if (steps >= budget) {
      /* the step limit reached: BDF goes on from here (with its own limit) rather than the run
         failing, as the estimate below can miss a stiffness (its increment, scaled by |y|, can
         carry a small state far past a nonlinearity: tests/test_compiled.py) */
      if (steps >= max_steps) { flag = NIMM_STIFF; break; }
      double rho = spectral_radius(wk, t, y);
      if (rho < 0 || h * rho >= NIMM_STIFF_RATIO) { flag = NIMM_STIFF; break; }
      budget = steps + NIMM_STIFF_STEPS < max_steps ? steps + NIMM_STIFF_STEPS : max_steps;
    }
    int free_step = k + NIMM_FREE_SPAN - 1 < n_grid && t + h >= grid[k + NIMM_FREE_SPAN - 1];
    int have_f_start = 0;
    t_start = t;
    memcpy(y_start, y, sizeof(y_start));
    int status = gsl_odeiv2_evolve_apply(evolve, control, step, &sys, &t,
                                         free_step ? grid[n_grid - 1] : grid[k], &h, y);
    steps++;
    if (status != GSL_SUCCESS) { flag = CV_ERR_FAILURE; break; }
    for (; k < n_grid && grid[k] <= t; k++, steps = 0, budget = first_budget) {
      double *at = out + (long)k * NIMM_NX;
      if (grid[k] == t) { memcpy(at, y, sizeof(double) * NIMM_NX); continue; }
      if (!have_f_start && gsl_f(t_start, y_start, f_start, wk) != GSL_SUCCESS) {
        flag = CV_ERR_FAILURE;
        goto done;
      }
      have_f_start = 1;
      memcpy(at, y_start, sizeof(y_start));
      if (gsl_odeiv2_step_apply(partial, t_start, grid[k] - t_start, at, y_err, f_start, NULL, &sys)
          != GSL_SUCCESS) {
        flag = CV_ERR_FAILURE;
        goto done;
      }
    }
  }
done:
  if (evolve) gsl_odeiv2_evolve_free(evolve);
  if (control) gsl_odeiv2_control_free(control);
  if (step) gsl_odeiv2_step_free(step);
  if (partial) gsl_odeiv2_step_free(partial);
  *t_io = t;
  *k_done = k;
  return flag;
}

/* One segment. method 1: CVODES Adams; 2: CVODES BDF; 3, 4, 5: GSL rkf45, rkck, rk8pd,
   switching to CVODES BDF from the point where the problem turns out stiff. Arguments as
   cvodes_solve, but t_reached has two places: the time reached, and the time of the hand-over
   to BDF (NAN if none). */
static int solve(double t0, const double *grid, int n_grid, const double *x0, const double *p,
                 double rtol, double atol, long max_steps, int method, double *out, double *t_reached) {
  const gsl_odeiv2_step_type *type = method == 3 ? gsl_odeiv2_step_rkf45
                                     : method == 4 ? gsl_odeiv2_step_rkck
                                     : method == 5 ? gsl_odeiv2_step_rk8pd : NULL;
  t_reached[1] = NAN;
  if (!type)
    return cvodes_solve(t0, grid, n_grid, x0, p, rtol, atol, max_steps, method, out, t_reached);
  nimm_work *wk = nimm_work_new(p);
  double y[NIMM_NX], t = t0;
  int k = 0, flag;
  if (!wk) return -100;
  gsl_set_error_handler_off(); /* GSL's default handler aborts the process; we report flags */
  memcpy(y, x0, sizeof(y));
  flag = gsl_solve(type, wk, &t, y, grid, n_grid, rtol, atol, max_steps, out, &k);
  free(wk);
  *t_reached = t;
  if (flag == NIMM_STIFF) {
    t_reached[1] = t;
    return cvodes_solve(t, grid + k, n_grid - k, y, p, rtol, atol, max_steps, CV_BDF,
                        out + (long)k * NIMM_NX, t_reached);
  }
  return flag;
}

int nimm_solve(double t0, const double *grid, int n_grid, const double *x0, const double *p,
               double rtol, double atol, long max_steps, int method, double *out, double *t_reached) {
  int flag = solve(t0, grid, n_grid, x0, p, rtol, atol, max_steps, method, out, t_reached);
  /* finite derivatives can still overflow a state to inf: the caller then reruns the segment */
  return flag == 0 && !all_finite(out, (long)n_grid * NIMM_NX) ? CV_ERR_FAILURE : flag;
}

/* The outputs (lets then observes) at n output times t[j], from row-major matrices (one row per
   quantity, one column per time, as numpy holds them): X [NIMM_NX x n], P [NIMM_NP x n], I
   [NIMM_NI x n] (NULL without integrals) and the weights w; Y [NIMM_NY x n] receives them.
   Returns nonzero on an error of the generated code. */
int nimm_outputs(int n, const double *t, const double *X, const double *P, const double *w,
                 const double *I, double *Y) {
  nimm_work *wk = (nimm_work *)calloc(1, sizeof(nimm_work));
  double x[NIMM_NX + 1], p[NIMM_NP + 1], in[NIMM_NI + 1] = {0}, y[NIMM_NY + 1];
  int flag = 0;
  if (!wk) return -1;
  wk->arg[1] = x;
  wk->arg[2] = p;
  wk->arg[3] = w;
  /* every argument set, NULL never (the generated code reads it unchecked: compiled.py); without
     integrals their accumulators read as zeros */
  if (NIMM_NI > 0) wk->arg[4] = in;
  wk->res[0] = y;
  for (long j = 0; j < n && !flag; j++) {
    wk->arg[0] = t + j;
    for (long r = 0; r < NIMM_NX; r++) x[r] = X[r * n + j];
    for (long r = 0; r < NIMM_NP; r++) p[r] = P[r * n + j];
    if (I) for (long r = 0; r < NIMM_NI; r++) in[r] = I[r * n + j];
    flag = nimm_out(wk->arg, wk->res, wk->iw, wk->w, 0);
    for (long r = 0; r < NIMM_NY; r++) Y[r * n + j] = y[r];
  }
  free(wk);
  return flag;
}
