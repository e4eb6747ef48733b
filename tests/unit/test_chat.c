/* test_chat.c - chat formatting against real templates rendered by jinja2
 * (tests/golden/chat/chat_golden.json, made by tests/golden/make_chat_golden.py). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/chat.h"
#include "testutil.h"

static json_t *load_golden(void) {
    char *path = tu_src_path("tests/golden/chat/chat_golden.json");
    json_error_t err;
    json_t *doc = json_load_file(path, 0, &err);
    cr_assert(doc, "cannot read %s: %s (line %d); run tests/golden/make_chat_golden.py", path, err.text, err.line);
    free(path);
    return doc;
}

static enum chat_format format_named(const char *name) {
    for (int f = 0; f < CHAT_FORMAT_COUNT; f++)
        if (strcmp(chat_format_name((enum chat_format)f), name) == 0) return (enum chat_format)f;
    return CHAT_UNKNOWN;
}

Test(chat, recognises_every_golden_template) {
    json_t *doc = load_golden();
    const char *name;
    json_t *t;
    int n = 0;
    json_object_foreach(json_object_get(doc, "templates"), name, t) {
        const char *text = json_string_value(json_object_get(t, "text"));
        struct chat_template ct;
        tp_err e = {0};
        cr_assert_eq(chat_detect(text, strlen(text), &ct, &e), 0, "%s: %s", name, e.msg);
        cr_assert_str_eq(chat_format_name(ct.format), json_string_value(json_object_get(t, "format")), "%s", name);
        json_t *ds = json_object_get(t, "default_system");
        if (ds) cr_assert_str_eq(ct.default_system, json_string_value(ds), "%s default system", name);
        n++;
    }
    cr_assert_geq(n, 3);
    json_decref(doc);
}

Test(chat, renders_every_golden_conversation_byte_for_byte) {
    json_t *doc = load_golden();
    json_t *templates = json_object_get(doc, "templates");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(doc, "cases"), i, c) {
        const char *tname = json_string_value(json_object_get(c, "template"));
        const char *cname = json_string_value(json_object_get(c, "name"));
        json_t *t = json_object_get(templates, tname);
        const char *text = json_string_value(json_object_get(t, "text"));
        struct chat_template ct;
        tp_err e = {0};
        cr_assert_eq(chat_detect(text, strlen(text), &ct, &e), 0);
        cr_assert_eq(ct.format, format_named(json_string_value(json_object_get(t, "format"))));

        json_t *msgs = json_object_get(c, "messages");
        size_t n = json_array_size(msgs);
        struct chat_message *m = calloc(n, sizeof *m);
        for (size_t k = 0; k < n; k++) {
            json_t *jm = json_array_get(msgs, k);
            m[k].role = json_string_value(json_object_get(jm, "role"));
            m[k].content = json_string_value(json_object_get(jm, "content"));
        }
        const char *bos = json_string_value(json_object_get(t, "bos"));
        char *out = NULL;
        size_t len = 0;
        bool has_bos = false;
        int rc = chat_apply(&ct, m, n, json_is_true(json_object_get(c, "add_generation_prompt")), bos, &out, &len,
                            &has_bos, &e);
        json_t *expected = json_object_get(c, "expected");
        if (!expected) {
            cr_assert_eq(rc, TP_EINVAL, "%s / %s: the template refuses this conversation (%s) but chat_apply gave %d",
                         tname, cname, json_string_value(json_object_get(c, "error")), rc);
            cr_assert(strstr(e.msg, "alternate"), "%s / %s: message should explain: %s", tname, cname, e.msg);
            cr_assert_null(out);
        } else {
            cr_assert_eq(rc, 0, "%s / %s: %s", tname, cname, e.msg);
            const char *want = json_string_value(expected);
            size_t want_len = json_string_length(expected);
            cr_assert_eq(len, want_len, "%s / %s: length %zu, jinja2 %zu\n got: %s\nwant: %s", tname, cname, len,
                         want_len, out, want);
            cr_assert(memcmp(out, want, len) == 0, "%s / %s:\n got: %s\nwant: %s", tname, cname, out, want);
            cr_assert_eq(out[len], '\0');
            /* bos_in_text is true exactly when the rendering starts with the BOS text. */
            bool starts = bos[0] && strncmp(out, bos, strlen(bos)) == 0;
            cr_assert_eq(has_bos, starts, "%s / %s: bos_in_text", tname, cname);
        }
        free(out);
        free(m);
    }
    json_decref(doc);
}

Test(chat, unknown_template_names_the_built_in_formats_and_the_flag) {
    const char *vicuna = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}ASSISTANT:";
    struct chat_template ct;
    tp_err e = {0};
    cr_assert_eq(chat_detect(vicuna, strlen(vicuna), &ct, &e), TP_EUNSUPPORTED);
    cr_assert_eq(ct.format, CHAT_UNKNOWN);
    cr_assert(strstr(e.msg, "gemma") && strstr(e.msg, "llama3") && strstr(e.msg, "chatml"), "%s", e.msg);
    cr_assert(strstr(e.msg, "--chat-format"), "%s", e.msg);

    tp_err e2 = {0};
    cr_assert_eq(chat_detect(NULL, 0, &ct, &e2), TP_EUNSUPPORTED);
    cr_assert(strstr(e2.msg, "--chat-format"), "%s", e2.msg);

    struct chat_message m = {"user", "hi"};
    char *out = (char *)1;
    size_t len;
    tp_err e3 = {0};
    cr_assert_eq(chat_apply(&ct, &m, 1, true, NULL, &out, &len, NULL, &e3), TP_EUNSUPPORTED);
    cr_assert_null(out);
}

Test(chat, format_flag_forces_a_format_and_rejects_unknown_names) {
    struct chat_template ct;
    tp_err e = {0};
    cr_assert_eq(chat_format_parse("llama3", &ct, &e), 0);
    cr_assert_eq(ct.format, CHAT_LLAMA3);
    cr_assert_eq(chat_format_parse("chatml", &ct, &e), 0);
    cr_assert_eq(ct.format, CHAT_CHATML);
    cr_assert_str_eq(ct.default_system, "");
    cr_assert_eq(chat_format_parse("vicuna", &ct, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "vicuna") && strstr(e.msg, "gemma"), "%s", e.msg);
}

Test(chat, default_bos_is_used_when_the_caller_gives_none) {
    struct chat_template ct;
    chat_format_parse("gemma", &ct, NULL);
    struct chat_message m = {"user", "hi"};
    char *out;
    size_t len;
    bool has_bos;
    cr_assert_eq(chat_apply(&ct, &m, 1, false, NULL, &out, &len, &has_bos, NULL), 0);
    cr_assert_str_eq(out, "<bos><start_of_turn>user\nhi<end_of_turn>\n");
    cr_assert(has_bos);
    free(out);

    chat_format_parse("chatml", &ct, NULL);
    cr_assert_eq(chat_apply(&ct, &m, 1, false, NULL, &out, &len, &has_bos, NULL), 0);
    cr_assert_not(has_bos);
    free(out);
}

Test(chat, rejects_empty_and_incomplete_messages) {
    struct chat_template ct;
    chat_format_parse("llama3", &ct, NULL);
    char *out;
    size_t len;
    tp_err e = {0};
    cr_assert_eq(chat_apply(&ct, NULL, 0, true, NULL, &out, &len, NULL, &e), TP_EINVAL);
    struct chat_message m[2] = {{"user", "a"}, {"assistant", NULL}};
    tp_err e2 = {0};
    cr_assert_eq(chat_apply(&ct, m, 2, true, NULL, &out, &len, NULL, &e2), TP_EINVAL);
    cr_assert(strstr(e2.msg, "message 1"), "%s", e2.msg);
}

Test(chat, reads_the_default_system_prompt_of_chatml_templates) {
    /* Qwen2.5's template: the tools branch opens the system turn with a quoted expression
     * (not a default); the plain branch carries the literal default. */
    const char *qwen25 =
        "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
        "{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
        "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' "
        "}}"
        "{%- endif %}{%- endif %}";
    struct chat_template ct;
    cr_assert_eq(chat_detect(qwen25, strlen(qwen25), &ct, NULL), 0);
    cr_assert_eq(ct.format, CHAT_CHATML);
    cr_assert_str_eq(ct.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");

    const char *qwen3 = "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}";
    cr_assert_eq(chat_detect(qwen3, strlen(qwen3), &ct, NULL), 0);
    cr_assert_str_eq(ct.default_system, "");
}
