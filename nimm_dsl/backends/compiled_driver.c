/* The integrator driver of the compiled route (nimm_dsl/backends/compiled.py): an explicit
   Dormand-Prince 5(4) pair on plain arrays (the default, `dopri5` below), and CVODES (Adams or
   BDF, dense linear solver, our Jacobian) for stiff problems or on request.

   It is appended to C code that CasADi generates for the model: nimm_rhs(t, x, p) -> dx/dt,
   nimm_jac(t, x, p) -> the structural nonzeros of d(dx/dt)/dx (their places in the dense
   column-major matrix: nimm_jac_at) and nimm_out (the outputs), with NIMM_NX states and the
   NIMM_SZ_* work sizes defined before this file. One call integrates one segment, stopping
   exactly at its last output time. */
#include <stdlib.h>
#include <string.h>
#include <cvodes/cvodes.h>
#include <nvector/nvector_serial.h>
#include <sunmatrix/sunmatrix_dense.h>
#include <sunlinsol/sunlinsol_dense.h>

typedef struct {
  const double *p;
  const casadi_real *arg[NIMM_SZ_ARG];
  casadi_real *res[NIMM_SZ_RES];
  casadi_int iw[NIMM_SZ_IW + 1];
  casadi_real w[NIMM_SZ_W + 1];
  casadi_real jac[NIMM_JAC_NNZ + 1];
} nimm_work;

static int all_finite(const double *v, long n) {
  for (long i = 0; i < n; i++)
    if (!(v[i] - v[i] == 0.0)) return 0; /* false for NaN and inf */
  return 1;
}

static int nimm_f(sunrealtype t, N_Vector x, N_Vector dx, void *user) {
  nimm_work *wk = (nimm_work *)user;
  double tt = t;
  wk->arg[0] = &tt;
  wk->arg[1] = N_VGetArrayPointer(x);
  wk->arg[2] = wk->p;
  wk->res[0] = N_VGetArrayPointer(dx);
  if (nimm_rhs(wk->arg, wk->res, wk->iw, wk->w, 0)) return -1;
  /* a NaN or inf derivative is recoverable: CVODES retries with a smaller step, and fails with
     a flag if that never helps */
  return all_finite(N_VGetArrayPointer(dx), NIMM_NX) ? 0 : 1;
}

static int nimm_j(sunrealtype t, N_Vector x, N_Vector fx, SUNMatrix J, void *user,
                  N_Vector t1, N_Vector t2, N_Vector t3) {
  nimm_work *wk = (nimm_work *)user;
  double tt = t;
  (void)fx; (void)t1; (void)t2; (void)t3;
  wk->arg[0] = &tt;
  wk->arg[1] = N_VGetArrayPointer(x);
  wk->arg[2] = wk->p;
  wk->res[0] = wk->jac;
  if (nimm_jac(wk->arg, wk->res, wk->iw, wk->w, 0)) return -1;
  /* the nonzeros into the dense matrix: a dense Jacobian in the generated code would be n^2
     assignments for gcc to compile */
  double *dense = SUNDenseMatrix_Data(J);
  memset(dense, 0, sizeof(double) * NIMM_NX * NIMM_NX);
  for (long k = 0; k < NIMM_JAC_NNZ; k++) dense[nimm_jac_at[k]] = wk->jac[k];
  return all_finite(wk->jac, NIMM_JAC_NNZ) ? 0 : 1;
}

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
  nimm_work *wk = (nimm_work *)calloc(1, sizeof(nimm_work));
  *t_reached = t0;
  if (!wk || SUNContext_Create(NULL, &ctx)) goto done;
  wk->p = p;
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
  if ((flag = CVodeSetJacFn(mem, nimm_j)) < 0) goto done;
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

/* ------------------------------------------------------------------ Dormand-Prince 5(4)
   The explicit pair of Hairer, Norsett & Wanner (Solving ODEs I, dopri5): six right-hand sides per
   step (the seventh is the next step's first), 4th-order dense output for the output times, and
   their stiffness test. On plain arrays a step costs a few dozen flops beyond the right-hand
   sides, where CVODES spends about 2 us on its generic vectors. */
#define NIMM_STIFF 1 /* returned by dopri5 when the problem looks stiff */

static int eval(nimm_work *wk, double t, const double *x, double *dx) {
  wk->arg[0] = &t;
  wk->arg[1] = x;
  wk->arg[2] = wk->p;
  wk->res[0] = dx;
  if (nimm_rhs(wk->arg, wk->res, wk->iw, wk->w, 0)) return 0;
  return all_finite(dx, NIMM_NX);
}

static int dopri5(nimm_work *wk, double *t_io, double *y, const double *grid, int n_grid,
                  double rtol, double atol, long max_steps, double *out, int *k_done) {
  static const double
    c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9,
    a21 = 1.0 / 5, a31 = 3.0 / 40, a32 = 9.0 / 40,
    a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9,
    a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561, a54 = -212.0 / 729,
    a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176, a65 = -5103.0 / 18656,
    a71 = 35.0 / 384, a73 = 500.0 / 1113, a74 = 125.0 / 192, a75 = -2187.0 / 6784, a76 = 11.0 / 84,
    e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920, e5 = -17253.0 / 339200, e6 = 22.0 / 525,
    e7 = -1.0 / 40,
    d1 = -12715105075.0 / 11282082432, d3 = 87487479700.0 / 32700410799,
    d4 = -10690763975.0 / 1880347072, d5 = 701980252875.0 / 199316789632,
    d6 = -1453857185.0 / 822651844, d7 = 69997945.0 / 29380423;
  enum { N = NIMM_NX };
  double k1[N], k2[N], k3[N], k4[N], k5[N], k6[N], k7[N], ys[N], y1[N];
  double r1[N], r2[N], r3[N], r4[N], r5[N];
  double t = *t_io, tend = grid[n_grid - 1], h, tnew, err, sk, fac, hnew, facold = 1e-4;
  int k = 0, stiff = 0, nonstiff = 0, rejected = 0, last;
  long steps = 0;
  if (!eval(wk, t, y, k1)) return -1;
  { /* initial step: Hairer's hinit, the first-order guess limited by the span */
    double d0 = 0, d1n = 0;
    for (int i = 0; i < N; i++) {
      sk = atol + rtol * fabs(y[i]);
      d0 += (y[i] / sk) * (y[i] / sk);
      d1n += (k1[i] / sk) * (k1[i] / sk);
    }
    h = (d0 <= 1e-10 || d1n <= 1e-10) ? 1e-6 : 0.01 * sqrt(d0 / d1n);
    if (h > tend - t) h = tend - t;
  }
  while (k < n_grid) {
    if (++steps > max_steps) return CV_TOO_MUCH_WORK;
    last = t + 1.01 * h >= tend; /* this step ends exactly at the segment end */
    if (last) h = tend - t;
    tnew = last ? tend : t + h;
    if (h <= 1e-14 * fabs(t) || h <= 0) return CV_ERR_FAILURE;
    for (int i = 0; i < N; i++) ys[i] = y[i] + h * a21 * k1[i];
    if (!eval(wk, t + c2 * h, ys, k2)) goto reject_nan;
    for (int i = 0; i < N; i++) ys[i] = y[i] + h * (a31 * k1[i] + a32 * k2[i]);
    if (!eval(wk, t + c3 * h, ys, k3)) goto reject_nan;
    for (int i = 0; i < N; i++) ys[i] = y[i] + h * (a41 * k1[i] + a42 * k2[i] + a43 * k3[i]);
    if (!eval(wk, t + c4 * h, ys, k4)) goto reject_nan;
    for (int i = 0; i < N; i++) ys[i] = y[i] + h * (a51 * k1[i] + a52 * k2[i] + a53 * k3[i] + a54 * k4[i]);
    if (!eval(wk, t + c5 * h, ys, k5)) goto reject_nan;
    for (int i = 0; i < N; i++)
      ys[i] = y[i] + h * (a61 * k1[i] + a62 * k2[i] + a63 * k3[i] + a64 * k4[i] + a65 * k5[i]);
    if (!eval(wk, t + h, ys, k6)) goto reject_nan;
    for (int i = 0; i < N; i++)
      y1[i] = y[i] + h * (a71 * k1[i] + a73 * k3[i] + a74 * k4[i] + a75 * k5[i] + a76 * k6[i]);
    if (!eval(wk, t + h, y1, k7)) goto reject_nan;
    err = 0;
    for (int i = 0; i < N; i++) {
      double e = h * (e1 * k1[i] + e3 * k3[i] + e4 * k4[i] + e5 * k5[i] + e6 * k6[i] + e7 * k7[i]);
      sk = atol + rtol * fmax(fabs(y[i]), fabs(y1[i]));
      err += (e / sk) * (e / sk);
    }
    err = sqrt(err / N);
    /* step size control with Lund stabilisation (beta = 0.04), as dopri5 */
    fac = pow(err, 0.2 - 0.04 * 0.75) / pow(facold, 0.04) / 0.9;
    fac = fmax(0.1, fmin(5.0, fac));
    hnew = h / fac;
    if (!(err <= 1.0)) {
      h = h / fmin(5.0, pow(err, 0.2) / 0.9 > 1 ? pow(err, 0.2) / 0.9 : 1.0);
      rejected = 1;
      continue;
    }
    facold = fmax(err, 1e-4);
    { /* stiffness test: h * |lambda| estimated from the last two stages */
      double num = 0, den = 0;
      for (int i = 0; i < N; i++) {
        num += (k7[i] - k6[i]) * (k7[i] - k6[i]);
        den += (y1[i] - ys[i]) * (y1[i] - ys[i]);
      }
      if (den > 0 && h * h * num > 3.25 * 3.25 * den) {
        nonstiff = 0;
        if (++stiff == 15) {
          *t_io = t;
          *k_done = k;
          return NIMM_STIFF; /* y is the state at t, outputs before k are written */
        }
      } else if (++nonstiff == 6) {
        stiff = 0;
      }
    }
    /* dense output on [t, t + h] for the output times it passed */
    for (int i = 0; i < N; i++) {
      double dy = y1[i] - y[i], b = h * k1[i] - dy;
      r1[i] = y[i];
      r2[i] = dy;
      r3[i] = b;
      r4[i] = dy - h * k7[i] - b;
      r5[i] = h * (d1 * k1[i] + d3 * k3[i] + d4 * k4[i] + d5 * k5[i] + d6 * k6[i] + d7 * k7[i]);
    }
    for (; k < n_grid && (grid[k] <= tnew || last); k++, steps = 0) {
      double *o = out + (long)k * N;
      if (grid[k] >= tnew) {
        memcpy(o, y1, sizeof(double) * N);
        continue;
      }
      double th = (grid[k] - t) / h, th1 = 1 - th;
      for (int i = 0; i < N; i++) o[i] = r1[i] + th * (r2[i] + th1 * (r3[i] + th * (r4[i] + th1 * r5[i])));
    }
    t = tnew;
    memcpy(y, y1, sizeof(double) * N);
    memcpy(k1, k7, sizeof(double) * N);
    if (rejected) hnew = fmin(hnew, h); /* no growth right after a rejection */
    rejected = 0;
    h = hnew;
    continue;
  reject_nan: /* a NaN or inf stage: try a much smaller step */
    h *= 0.1;
    rejected = 1;
  }
  *t_io = t;
  *k_done = k;
  return 0;
}

/* The entry point. method 0: Dormand-Prince, switching to CVODES BDF from the point where the
   problem turns out stiff; 1: CVODES Adams; 2: CVODES BDF. Arguments as cvodes_solve. */
int nimm_solve(double t0, const double *grid, int n_grid, const double *x0, const double *p,
               double rtol, double atol, long max_steps, int method, double *out, double *t_reached) {
  if (method != 0)
    return cvodes_solve(t0, grid, n_grid, x0, p, rtol, atol, max_steps, method, out, t_reached);
  nimm_work *wk = (nimm_work *)calloc(1, sizeof(nimm_work));
  double y[NIMM_NX], t = t0;
  int k = 0, flag;
  if (!wk) return -100;
  wk->p = p;
  memcpy(y, x0, sizeof(y));
  flag = dopri5(wk, &t, y, grid, n_grid, rtol, atol, max_steps, out, &k);
  free(wk);
  *t_reached = t;
  if (flag == NIMM_STIFF)
    return cvodes_solve(t, grid + k, n_grid - k, y, p, rtol, atol, max_steps, CV_BDF,
                        out + (long)k * NIMM_NX, t_reached);
  return flag;
}

/* The outputs (lets then observes) at n output times: column j of each argument is
   t[j], X[j * NIMM_NX ...], P[j * NIMM_NP ...], the weights w, I[j * NIMM_NI ...] (NULL without
   integrals); Y[j * NIMM_NY ...] receives them. Returns nonzero on an error of the generated code. */
int nimm_outputs(int n, const double *t, const double *X, const double *P, const double *w,
                 const double *I, double *Y) {
  nimm_work *wk = (nimm_work *)calloc(1, sizeof(nimm_work));
  int flag = 0;
  if (!wk) return -1;
  for (int j = 0; j < n && !flag; j++) {
    wk->arg[0] = t + j;
    wk->arg[1] = X + (long)j * NIMM_NX;
    wk->arg[2] = P + (long)j * NIMM_NP;
    wk->arg[3] = w;
    if (NIMM_NI > 0) wk->arg[4] = I ? I + (long)j * NIMM_NI : 0;
    wk->res[0] = Y + (long)j * NIMM_NY;
    flag = nimm_out(wk->arg, wk->res, wk->iw, wk->w, 0);
  }
  free(wk);
  return flag;
}
