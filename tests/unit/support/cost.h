/* Growth checks for algorithmic cost: whether an operation's CPU time grows linearly
 * with a client-controlled count, so a quadratic path fails a test while timing noise
 * does not. */
#ifndef XMPP_TEST_COST_H
#define XMPP_TEST_COST_H

#include <stddef.h>

/* CPU seconds used by this process so far. */
double cost_cpu_now(void);

/* Runs run(ud, n) 8 times and run(ud, 8n) once (both repeated until the larger takes at
 * least 20 ms, best of three rounds) and returns time(8n) / time(8 x n): about 1 when the
 * cost is linear in n, about 8 when it is quadratic. */
double cost_growth(void (*run)(void *ud, size_t n), void *ud, size_t n);

#endif
