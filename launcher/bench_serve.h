/* bench_serve.h - `tpllm bench serve`: online load test of an OpenAI-compatible server. */
#ifndef TPLLM_BENCH_SERVE_H
#define TPLLM_BENCH_SERVE_H

/* argv[0] is "serve"; returns the exit status (0 when every request completed). */
int cmd_bench_serve(int argc, char **argv);

#endif
