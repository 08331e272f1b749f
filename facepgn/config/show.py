"""A config's full defaults as commented YAML (``facepgn config show JOB``): every key with its
default value, commented with the comments its field has in the source (the lines above it and the
one at the end of its line) or its ``Field(description=...)``."""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

import yaml

from facepgn.config.base import StrictModel

COMMENT_COLUMN = 34  # trailing comments start here (or two spaces after a longer line)


@functools.lru_cache(maxsize=None)
def _own_field_comments(cls: type) -> dict[str, tuple[tuple[str, ...], str]]:
    """Comments of the fields declared in ``cls`` itself: (lines above, end-of-line comment)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        trailing = next((comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments), "")
        out[node.target.id] = (tuple(above), trailing)
    return out


def field_comments(cls: type[StrictModel]) -> dict[str, tuple[tuple[str, ...], str]]:
    """(comment lines above, end-of-line comment) of every field of ``cls``, inherited ones too;
    a field's ``description`` stands in for a missing end-of-line comment."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, StrictModel) and klass is not StrictModel:
            out.update(_own_field_comments(klass))
    for name, field in cls.model_fields.items():
        above, trailing = out.get(name, ((), ""))
        if not trailing and field.description:
            out[name] = (above, field.description)
    return out


def _flow(value: Any) -> str:
    """One value as flow-style YAML (``[.mp4, .avi]``, ``null``, ``'off'``)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**9, sort_keys=False).strip()[1:-1]


def _doc_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _with_comment(text: str, comment: str) -> str:
    if not comment:
        return text
    return f"{text.ljust(COMMENT_COLUMN - 2)}  # {comment}"


def _section_lines(section: StrictModel, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    comments = field_comments(type(section))
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        above, trailing = comments.get(name, ((), ""))
        lines += [f"{pad}# {c}" if c else f"{pad}#" for c in above]
        if isinstance(value, StrictModel):
            lines.append(_with_comment(f"{pad}{name}:", trailing or _doc_line(type(value))))
            lines += _section_lines(value, indent + 2)
            continue
        if isinstance(value, dict) and any(isinstance(v, StrictModel) for v in value.values()):
            data = {k: v.model_dump(mode="json", exclude_none=True) if isinstance(v, StrictModel) else v for k, v in value.items()}
        else:
            data = section.model_dump(mode="json", include={name})[name]
        lines.append(_with_comment(f"{pad}{name}: {_flow(data)}", trailing))
    return lines


def defaults_yaml(cls: type[StrictModel], title: str = "") -> str:
    """``cls``'s defaults as YAML, each key commented; loading the text gives ``cls()`` again."""
    head = [f"# {title}" if title else f"# {cls.__name__}"]
    head += [f"# {line}".rstrip() for line in textwrap.wrap(_doc_line(cls), 96)]
    return "\n".join(head + _section_lines(cls(), 0)) + "\n"
