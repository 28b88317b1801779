#include "cost.h"

#include <time.h>

double cost_cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double timed(void (*run)(void *, size_t), void *ud, size_t n, unsigned reps) {
  double t0 = cost_cpu_now();
  for (unsigned i = 0; i < reps; i++) run(ud, n);
  return cost_cpu_now() - t0;
}

double cost_growth(void (*run)(void *ud, size_t n), void *ud, size_t n) {
  unsigned reps = 1;
  while (reps < (1u << 20) && timed(run, ud, 8 * n, reps) < 0.02) reps *= 2;
  double best_big = 0, best_small = 0;
  for (int round = 0; round < 3; round++) {
    double big = timed(run, ud, 8 * n, reps), small = timed(run, ud, n, 8 * reps);
    if (round == 0 || big < best_big) best_big = big;
    if (round == 0 || small < best_small) best_small = small;
  }
  return best_small > 0 ? best_big / best_small : 1e9;
}
