/* sampling_opts.h - command-line flags for sampling and stop strings, shared by commands. */
#ifndef TPLLM_SAMPLING_OPTS_H
#define TPLLM_SAMPLING_OPTS_H

#include "runtime/sampler.h"

#define SAMPLING_MAX_STOPS 16

struct sampling_opts {
    struct sampler_params sp;
    const char *stops[SAMPLING_MAX_STOPS];
    size_t n_stops;
};

void sampling_opts_default(struct sampling_opts *o);
/* 1: consumed argv[*i] (and its value); 0: not a sampling flag; -1: bad value (printed). */
int sampling_parse_opt(struct sampling_opts *o, int argc, char **argv, int *i);
extern const char *sampling_opts_usage;

#endif
