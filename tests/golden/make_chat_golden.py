#!/usr/bin/env python3
"""make_chat_golden.py - render real chat templates with jinja2 into tests/golden/chat/chat_golden.json.

test_chat.c checks that tpllm's built-in formatters (runtime/chat.c) produce these strings
byte for byte, and that chat_detect recognises each template.

Rendering follows transformers' apply_chat_template: a sandboxed jinja2 environment with
trim_blocks and lstrip_blocks, raise_exception() as a global, and the variables messages,
add_generation_prompt, bos_token and eos_token.

Templates:
  gemma   Gemma 3, read from the GGUF file's tokenizer.chat_template (via the gguf package)
          when it has one ($TPLLM_GEMMA or models/gemma-3-270m-q4_k_m.gguf). The 270M file we
          use is the pretrained model and carries no chat template, so the published template
          of the instruction-tuned Gemma 3 models (google/gemma-3-*-it, tokenizer_config.json)
          is used instead; the JSON records which source was used.
  llama3  meta-llama/Meta-Llama-3-8B-Instruct's published template.
  qwen2   Qwen/Qwen2-7B-Instruct's published template (ChatML with a default system prompt).
  chatml  The plain ChatML template of the transformers chat-templating documentation
          (no default system prompt).

Run: /work/main/.pydeps/bin/python tests/golden/make_chat_golden.py   (needs jinja2, gguf)
"""
import json
import os
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "chat", "chat_golden.json")

GEMMA3_PUBLISHED = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Conversations: (name, messages, add_generation_prompt).
CONVERSATIONS = [
    ("system+user", [{"role": "system", "content": "You are a terse assistant."},
                     {"role": "user", "content": "What is tensor parallelism?"}], True),
    ("user only", [{"role": "user", "content": "Hello!"}], True),
    ("multi-turn", [{"role": "system", "content": "Answer in one sentence.  "},
                    {"role": "user", "content": "  Name a prime number.\n"},
                    {"role": "assistant", "content": "Seven is prime.\n\n"},
                    {"role": "user", "content": "And an even one?"}], True),
    ("multi-turn, no generation prompt", [{"role": "user", "content": "Ping"},
                                          {"role": "assistant", "content": "Pong"}], False),
    ("unicode", [{"role": "system", "content": "Réponds en français, s'il te plaît. ☕"},
                 {"role": "user", "content": "\u3000\u00a0Überprüfe: 東京は日本の首都ですか？ 🤔\u2003\n"},
                 {"role": "assistant", "content": "\u2028Да, это так — 是的。\u200b"},
                 {"role": "user",
                  "content": "\t\u0085emoji 👩‍💻 and \"quotes\" and 'apostrophes' {{ braces }}\u202f"}],
     True),
    ("system only", [{"role": "system", "content": "You are a helpful assistant."}], True),
    ("empty content", [{"role": "user", "content": ""}], True),
    ("not alternating", [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], True),
    ("system later", [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                      {"role": "user", "content": "c"}], True),
    ("assistant first", [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}], True),
]


def gemma_template():
    path = os.environ.get("TPLLM_GEMMA", os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"))
    if os.path.exists(path):
        import gguf
        reader = gguf.GGUFReader(path)
        field = reader.fields.get("tokenizer.chat_template")
        if field is not None:
            text = bytes(field.parts[field.data[0]]).decode("utf-8")
            return text, f"tokenizer.chat_template of {os.path.basename(path)}"
        note = f"{os.path.basename(path)} has no tokenizer.chat_template (pretrained model); "
    else:
        note = f"{path} not found; "
    return GEMMA3_PUBLISHED, (note + "published Gemma 3 instruction-tuned template "
                              "(google/gemma-3-*-it tokenizer_config.json)")


def render(template, messages, add_generation_prompt, bos_token, eos_token):
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token)


def main():
    gemma_text, gemma_source = gemma_template()
    templates = {
        "gemma": {"format": "gemma", "bos": "<bos>", "eos": "<eos>", "text": gemma_text, "source": gemma_source},
        "llama3": {"format": "llama3", "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "text": LLAMA3,
                   "source": "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json"},
        "qwen2": {"format": "chatml", "bos": "", "eos": "<|im_end|>", "text": QWEN2,
                  "default_system": "You are a helpful assistant.",
                  "source": "Qwen/Qwen2-7B-Instruct tokenizer_config.json"},
        "chatml": {"format": "chatml", "bos": "", "eos": "<|im_end|>", "text": CHATML, "default_system": "",
                   "source": "transformers chat templating documentation (ChatML)"},
    }
    cases = []
    for tname, t in templates.items():
        for cname, messages, gen in CONVERSATIONS:
            case = {"template": tname, "name": cname, "messages": messages, "add_generation_prompt": gen}
            try:
                case["expected"] = render(t["text"], messages, gen, t["bos"], t["eos"])
            except TemplateError as exc:
                case["error"] = str(exc)
            cases.append(case)
    doc = {
        "about": "Chat templates rendered by jinja2 " + __import__("jinja2").__version__ +
                 " as transformers' apply_chat_template does; made by tests/golden/make_chat_golden.py",
        "templates": templates,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases; gemma template: {gemma_source}", file=sys.stderr)


if __name__ == "__main__":
    main()
