/* The integrator driver of the compiled route (nimm_dsl/backends/compiled.py).

   It is appended to C code that CasADi generates for the model: nimm_rhs(t, x, p) -> dx/dt and
   nimm_jac(t, x, p) -> d(dx/dt)/dx as a dense column-major matrix, with NIMM_NX states and the
   NIMM_SZ_* work sizes defined before this file. One call integrates one segment: CVODES from
   (t0, x) to each grid time, stopping exactly at the last one. */
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
  wk->res[0] = SUNDenseMatrix_Data(J); /* column-major, as CasADi writes a dense matrix */
  if (nimm_jac(wk->arg, wk->res, wk->iw, wk->w, 0)) return -1;
  return all_finite(SUNDenseMatrix_Data(J), (long)NIMM_NX * NIMM_NX) ? 0 : 1;
}

static void nimm_silent(int code, const char *module, const char *function, char *msg, void *data) {
  (void)code; (void)module; (void)function; (void)msg; (void)data; /* the caller reports */
}

/* Integrates from (t0, x) to grid[0..n_grid-1] (increasing, > t0). Writes the states at each
   grid time into out[k * NIMM_NX + i]. lmm: CV_ADAMS (1) or CV_BDF (2). Returns 0 on success,
   else the CVODES flag (negative) with *t_reached the time the solver got to. */
int nimm_solve(double t0, const double *grid, int n_grid, const double *x0, const double *p,
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
