"""A scripted responder that speaks DSPy's ChatAdapter format, for fake-engine tests.

It reads the output field names from the system message DSPy's ChatAdapter
writes ("Your output fields are: 1. `reasoning` ...") and fills each; the
``answer`` field of a word-sorting question gets the sorted words (or a
wrong order with ``correct=False``).
"""

from __future__ import annotations

import re

from engines.base import GenRequest

_OUT = re.compile(r"Your output fields are:\n(.*?)\n(?:All interactions|$)", re.S)
_NAME = re.compile(r"^\d+\. `(\w+)`", re.M)
_WORDS = re.compile(r"List: ([a-z' -]+)")


def chat_adapter_responder(correct: bool = True):
    def respond(req: GenRequest) -> str:
        system = req.messages[0].content if req.messages else ""
        m = _OUT.search(system)
        names = _NAME.findall(m.group(1)) if m else ["answer"]
        words = _WORDS.findall(req.messages[-1].content)
        out = []
        for name in names:
            if name == "answer":
                ws = sorted(words[-1].split()) if words else ["x"]
                value = " ".join(ws if correct else ws[::-1])
            else:
                value = f"some {name} text"
            out.append(f"[[ ## {name} ## ]]\n{value}")
        return "\n\n".join(out) + "\n\n[[ ## completed ## ]]"

    return respond
