"""Fill-in-the-middle prompts as text, for engines that take a rendered prompt.

An OpenAI-compatible engine gets the prompt as text: vLLM refuses ``suffix`` (400 "suffix
is not currently supported"), Ollama applies it only where the model's template uses
it, TGI appends it (docs/engines.md). So vibrant renders the FIM prompt for the served
model itself, with that model's own special tokens written as text (llama-server, vLLM
and SGLang parse special tokens in a text prompt; Ollama gets it with ``raw``, its
template left out), and stops on its end and file-separator tokens. The local runtime
builds the same layout from token ids (``inference.model``); llama-server's ``/infill``
builds it on the engine.

The served model is known by its name (``/v1/models``, ``/api/tags``, or the engine's
``model`` setting); the families below are the code models with FIM tokens that
vibrant's registry and the peers' templates (Continue's ``AutocompleteTemplate.ts``,
Tabby's ``prompt_template``) know. A model of none of them gets the prefix alone, as the
local runtime does for a model without FIM tokens.
"""

from __future__ import annotations

import re

import msgspec

from ..inference.model import CompletionRequest
from ..inference.prompt import REPO_NAME, ContextChunk


class FimTemplate(msgspec.Struct, frozen=True, kw_only=True):
    family: str
    prefix: str
    suffix: str
    middle: str
    # Tokens that end a completion: end of text, and the start of another file or turn.
    stops: tuple[str, ...]
    file_sep: str | None = None  # repo-level layout: <|file_sep|>name\ntext per chunk
    repo_name: str | None = None


QWEN_CODER = FimTemplate(
    family="qwen2.5-coder",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    stops=(
        "<|endoftext|>",
        "<|file_sep|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|im_start|>",
        "<|im_end|>",
    ),
    file_sep="<|file_sep|>",
    repo_name="<|repo_name|>",
)
STARCODER2 = FimTemplate(
    family="starcoder",
    prefix="<fim_prefix>",
    suffix="<fim_suffix>",
    middle="<fim_middle>",
    stops=("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    file_sep="<file_sep>",
    repo_name="<repo_name>",
)
CODEGEMMA = FimTemplate(
    family="codegemma",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    stops=(
        "<|file_separator|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<end_of_turn>",
        "<eos>",
    ),
)
DEEPSEEK_CODER = FimTemplate(
    family="deepseek-coder",
    prefix="<｜fim▁begin｜>",
    suffix="<｜fim▁hole｜>",
    middle="<｜fim▁end｜>",
    stops=(
        "<｜end▁of▁sentence｜>",
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
        "<|EOT|>",
    ),
)
CODELLAMA = FimTemplate(
    family="codellama",
    prefix="<PRE> ",
    suffix=" <SUF>",
    middle=" <MID>",
    stops=("<EOT>", "</s>"),
)

# Name patterns, most specific first (a served model is named by its repository, its
# file or an alias: "Qwen/Qwen2.5-Coder-7B", "qwen2.5-coder-7b-instruct-q5_k_m.gguf").
_BY_NAME: list[tuple[re.Pattern[str], FimTemplate]] = [
    (re.compile(r"qwen[\w.]*[-_ ]?coder", re.I), QWEN_CODER),
    (re.compile(r"starcoder", re.I), STARCODER2),
    (re.compile(r"codegemma", re.I), CODEGEMMA),
    (re.compile(r"deepseek[-_ ]?coder", re.I), DEEPSEEK_CODER),
    (re.compile(r"code[-_ ]?llama", re.I), CODELLAMA),
]


def template_for(model_name: str | None) -> FimTemplate | None:
    """The FIM template of the model ``model_name`` names; None: no FIM known for it."""
    if not model_name:
        return None
    for pattern, template in _BY_NAME:
        if pattern.search(model_name):
            return template
    return None


def commented(chunks: list[ContextChunk], comment: str) -> str:
    """Other files as commented lines under their path: for a model without a file
    separator (as Tabby and Copilot do, and as the local runtime lays them out)."""
    out = ""
    for chunk in chunks:
        out += f"{comment} Path: {chunk.filename}\n"
        out += "".join(f"{comment} {line}\n" for line in chunk.text.splitlines())
    return out


def render(
    template: FimTemplate,
    prefix: str,
    suffix: str,
    context: list[ContextChunk] | None = None,
    filename: str | None = None,
    comment: str = "#",
) -> str:
    """The prompt as the model was trained on it, in the local runtime's layout
    (``inference.prompt``): other files first (they stay the same from keystroke to
    keystroke, so the engine's prefix cache keeps them), in Qwen's repo-level format
    where the model has a file separator, else as commented lines at the start of the
    prefix; then prefix, suffix, middle."""
    if context and template.file_sep is not None:
        head = f"{template.repo_name}{REPO_NAME}\n" if template.repo_name else ""
        for chunk in context:
            text = chunk.text if chunk.text.endswith("\n") else chunk.text + "\n"
            head += f"{template.file_sep}{chunk.filename}\n{text}"
        head += f"{template.file_sep}{filename or 'file'}\n"
        return f"{head}{template.prefix}{prefix}{template.suffix}{suffix}{template.middle}"
    head = commented(context or [], comment)
    return f"{template.prefix}{head}{prefix}{template.suffix}{suffix}{template.middle}"


class TextPrompt(msgspec.Struct, frozen=True):
    """What an engine that takes text is sent for one request."""

    prompt: str
    fim: bool  # rendered for the served model's FIM template, not the prefix continued
    model_stops: list[str]  # the served model's end and file-separator tokens
    stops: list[str]  # the request's and the model's: where the engine is asked to stop


def text_prompt(template: FimTemplate | None, req: CompletionRequest) -> TextPrompt:
    """The prompt an engine that takes text gets for ``req`` (OpenAI-compatible servers,
    Ollama's raw mode), and where it stops: rendered for the served model's template
    where the request has a suffix; else, no FIM known for the model (or no suffix), the
    prefix after the other files as commented lines, continued."""
    model_stops = list(template.stops) if template is not None else []
    stops = list(dict.fromkeys([*req.stop, *model_stops]))
    if template is not None and req.suffix is not None:
        prompt = render(template, req.prompt, req.suffix, req.context, req.filename,
                        req.comment)  # fmt: skip
        return TextPrompt(prompt, True, model_stops, stops)
    return TextPrompt(commented(req.context, req.comment) + req.prompt, False, model_stops, stops)
