/* sampling_opts.c - command-line flags for sampling and stop strings. */
#include "sampling_opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *sampling_opts_usage =
    "  --temp F                temperature; 0 = greedy (default 0.8)\n"
    "  --top-k N               keep the N most likely tokens; 0 = off (default 40)\n"
    "  --top-p F               nucleus sampling mass; 1 = off (default 0.95)\n"
    "  --min-p F               drop tokens below F x the top probability; 0 = off (default 0.05)\n"
    "  --repeat-penalty F      penalise repeated tokens; 1 = off (default 1)\n"
    "  --repeat-last-n N       history window for penalties; -1 = all (default 64)\n"
    "  --presence-penalty F    (default 0)\n"
    "  --frequency-penalty F   (default 0)\n"
    "  -s, --seed N            sampling seed; same seed, same text (default random)\n"
    "  --stop TEXT             stop when TEXT is generated (repeatable, up to 16)\n";

void sampling_opts_default(struct sampling_opts *o) {
    memset(o, 0, sizeof *o);
    sampler_params_default(&o->sp);
}

static int num(const char *flag, const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v ? v : "", &end);
    if (!v || *v == '\0' || *end != '\0' || errno) {
        fprintf(stderr, "tpllm: %s expects a number, got '%s'\n", flag, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

int sampling_parse_opt(struct sampling_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    static const char *flags[] = {"--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--repeat-last-n",
                                  "--presence-penalty", "--frequency-penalty", "--seed", "-s", "--stop"};
    size_t k;
    for (k = 0; k < sizeof flags / sizeof flags[0]; k++)
        if (!strcmp(a, flags[k])) break;
    if (k == sizeof flags / sizeof flags[0]) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "tpllm: %s needs a value (see --help)\n", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(a, "--stop")) {
        if (o->n_stops == SAMPLING_MAX_STOPS) {
            fprintf(stderr, "tpllm: at most %d --stop strings\n", SAMPLING_MAX_STOPS);
            return -1;
        }
        o->stops[o->n_stops++] = v;
        return 1;
    }
    if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (*v == '\0' || *end != '\0' || errno || v[0] == '-') {
            fprintf(stderr, "tpllm: --seed expects a non-negative integer, got '%s'\n", v);
            return -1;
        }
        o->sp.seed = s;
        return 1;
    }
    double x;
    if (num(a, v, &x)) return -1;
    if (!strcmp(a, "--temp")) o->sp.temperature = (float)x;
    else if (!strcmp(a, "--top-k")) o->sp.top_k = (int32_t)x;
    else if (!strcmp(a, "--top-p")) o->sp.top_p = (float)x;
    else if (!strcmp(a, "--min-p")) o->sp.min_p = (float)x;
    else if (!strcmp(a, "--repeat-penalty")) o->sp.repeat_penalty = (float)x;
    else if (!strcmp(a, "--repeat-last-n")) o->sp.repeat_last_n = (int32_t)x;
    else if (!strcmp(a, "--presence-penalty")) o->sp.presence_penalty = (float)x;
    else if (!strcmp(a, "--frequency-penalty")) o->sp.frequency_penalty = (float)x;
    return 1;
}
