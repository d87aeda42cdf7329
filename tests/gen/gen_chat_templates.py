#!/usr/bin/env python3
"""gen_chat_templates.py — golden chat-template renderings from HF transformers.

Renders every template below with transformers' apply_chat_template (the real
Jinja2 environment) on a set of conversations, with and without a system prompt,
multi-turn, with tools where the template supports them, and with
add_generation_prompt both ways, and writes tests/fixtures/chat_templates/golden.json
(read by tests/c/test_tokenizer.c and tests/lua/test_tokenizer.lua). A case the
template refuses (raise_exception) records the error message instead.
Templates: tokenizer_config.json of tests/fixtures/tokenizers/{qwen2.5,qwen3,llama3.1},
and the *.jinja files beside golden.json (from llama.cpp's models/templates and its
test-chat-template.cpp, which copy them from the models' tokenizer_config.json).
strftime_now is pinned to NOW so the output does not depend on the day.
Reference tooling only, nothing here runs at test time:
  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install transformers jinja2
  /tmp/ref/bin/python tests/gen/gen_chat_templates.py
"""
import calendar
import datetime as dt
import json
import os

import transformers.utils.chat_template_utils as ctu
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, '..', 'fixtures')
OUT = os.path.join(FIX, 'chat_templates')

NOW = dt.datetime(2026, 3, 7, 12, 0, 0)


class FixedClock(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


ctu.datetime = FixedClock   # strftime_now reads the module's datetime at call time

LLAMA_TOKENS = {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>'}
# name -> (source, special tokens for the file templates, supports tools)
TEMPLATES = {
    'qwen2.5': ({'tokenizer': 'tokenizers/qwen2.5'}, None, True),
    'qwen3': ({'tokenizer': 'tokenizers/qwen3'}, None, True),
    'llama3.1': ({'tokenizer': 'tokenizers/llama3.1'}, None, False),
    'llama3.1-tools': ({'file': 'meta-llama-Llama-3.1-8B-Instruct.jinja'}, LLAMA_TOKENS, True),
    'llama3.2': ({'file': 'meta-llama-Llama-3.2-3B-Instruct.jinja'}, LLAMA_TOKENS, True),
    'mistral-7b': ({'file': 'mistralai-Mistral-7B-Instruct-v0.2.jinja'},
                   {'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'}, False),
    'mistral-nemo': ({'file': 'mistralai-Mistral-Nemo-Instruct-2407.jinja'},
                     {'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'}, True),
    'smollm2': ({'file': 'HuggingFaceTB-SmolLM2-135M-Instruct.jinja'},
                {'bos_token': '<|im_start|>', 'eos_token': '<|im_end|>', 'unk_token': '<|endoftext|>',
                 'pad_token': '<|im_end|>'}, False),
    'phi3-mini': ({'file': 'microsoft-Phi-3-mini-4k-instruct.jinja'},
                  {'bos_token': '<s>', 'eos_token': '<|endoftext|>', 'unk_token': '<unk>',
                   'pad_token': '<|endoftext|>'}, False),
    'phi3.5-mini': ({'file': 'microsoft-Phi-3.5-mini-instruct.jinja'},
                    {'bos_token': '<s>', 'eos_token': '<|endoftext|>', 'unk_token': '<unk>',
                     'pad_token': '<|endoftext|>'}, False),
    'gemma2': ({'file': 'google-gemma-2-2b-it.jinja'},
               {'bos_token': '<bos>', 'eos_token': '<eos>', 'unk_token': '<unk>', 'pad_token': '<pad>'}, False),
}

# object keys are in sorted order where a template may tojson them, so that Lua
# (whose JSON encoder sorts keys) can pass the same values
TOOLS = [{"function": {"description": "Get the current weather in a city.", "name": "get_weather",
                       "parameters": {"properties": {"city": {"description": "The city, e.g. Paris", "type": "string"},
                                                     "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"}},
                                      "required": ["city"], "type": "object"}},
          "type": "function"}]

CONVS = [
    # 0: one user turn
    [{"role": "user", "content": "Hello!"}],
    # 1: system prompt, multi-turn
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    # 2: no system prompt, multi-turn ending with the assistant
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}],
    # 3: whitespace that templates trim or keep, unicode
    [{"role": "user", "content": "  padded  \n"}, {"role": "assistant", "content": "\n\nreply  "},
     {"role": "user", "content": "日本語で答えて 🤖 \"quoted\" \\ back"}],
    # 4: reasoning in the content and as reasoning_content
    [{"role": "user", "content": "q1"},
     {"role": "assistant", "content": "<think>\nreasoning A\n</think>\n\nanswer A"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "final", "reasoning_content": "thought"}],
    # 5: a tool call and its result (rendered with TOOLS)
    [{"role": "system", "content": "You help with weather."},
     {"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": "",
      "tool_calls": [{"function": {"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"},
                      "id": "call12345", "type": "function"}]},
     {"role": "tool", "content": "{\"temperature\": 21}", "name": "get_weather", "tool_call_id": "call12345"},
     {"role": "assistant", "content": "It is 21 C in Paris."}],
    # 6: tools offered, no call yet
    [{"role": "user", "content": "Weather in Rome?"}],
]
TOOL_CONVS = {5, 6}


def main():
    fixtures = {}
    cases = []
    default_tok = AutoTokenizer.from_pretrained(os.path.join(FIX, 'tokenizers', 'qwen2.5'))
    for name, (src, tokens, tools_ok) in TEMPLATES.items():
        fixtures[name] = dict(src)
        if tokens:
            fixtures[name]['tokens'] = tokens
        if 'tokenizer' in src:
            tok = AutoTokenizer.from_pretrained(os.path.join(FIX, src['tokenizer']))
            kw_base = {}
        else:
            tok = default_tok
            with open(os.path.join(OUT, src['file']), encoding='utf-8') as f:
                tmpl = f.read()
            # the tokenizer's own special tokens are replaced by the model's
            kw_base = {'chat_template': tmpl, 'bos_token': None, 'eos_token': None, 'unk_token': None,
                       'pad_token': None, 'additional_special_tokens': None}
            kw_base.update(tokens)
        for ci, conv in enumerate(CONVS):
            with_tools = ci in TOOL_CONVS
            if with_tools and not tools_ok:
                continue
            for agp in (False, True):
                for think in ((True, False) if name == 'qwen3' else (True,)):
                    kw = dict(kw_base)
                    if not think:
                        kw['enable_thinking'] = False
                    if with_tools:
                        kw['tools'] = TOOLS
                    case = {'template': name, 'conv': ci, 'tools': with_tools, 'add_generation_prompt': agp,
                            'enable_thinking': think}
                    try:
                        case['expected'] = tok.apply_chat_template(json.loads(json.dumps(conv)), tokenize=False,
                                                                   add_generation_prompt=agp, **kw)
                    except Exception as e:   # the template's raise_exception
                        case['error'] = str(e)
                    cases.append(case)
    doc = {'generator': 'tests/gen/gen_chat_templates.py', 'now': calendar.timegm(NOW.timetuple()),
           'templates': fixtures, 'tools': json.dumps(TOOLS, ensure_ascii=False), 'conversations': CONVS,
           'cases': cases}
    with open(os.path.join(OUT, 'golden.json'), 'w', encoding='utf-8') as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write('\n')
    print(len(cases), 'cases,', sum('error' in c for c in cases), 'of them errors')


if __name__ == '__main__':
    main()
