"""Copy the golden screens into the text captures of docs/DSO-GUIDE.md (each block is found by its first line).

Run after regenerating the golden files: ``.venv/bin/python tests/golden/refresh_dso_guide.py``;
tests/unit/test_batch_cli_golden.py checks that the guide shows them.
"""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
p = HERE.parent.parent / "docs" / "DSO-GUIDE.md"
s = p.read_text()


def G(name: str) -> str:
    return (HERE / name).read_text().rstrip()


gold = G("batch_show_80.txt").split("\n")
starts = [i for i, line in enumerate(gold) if re.match(r" ?\d+  S\d{4}", line)]  # the first line of each record
excerpt = "\n".join(gold[: starts[3]] + ["   …"] + gold[starts[-1] :]).rstrip()
stu = G("batch_show_student.txt").split("\n")
a = next(i for i, line in enumerate(stu) if line.startswith("#2 "))
stu_ex = "\n".join(stu[a : a + 14]).rstrip()
pipe = G("batch_show_pipe.txt").split("\n")
heads = [i for i, line in enumerate(pipe) if re.match(r"#\d+  S\d{4}", line)]
j = next(i for i in heads if "S1005" in pipe[i])
k = next(i for i in heads if i > j)
pipe_ex = "\n".join(pipe[j:k]).rstrip()
blocks = {
    "Open batch of ABC214F12345000, revision 13\n8 records": excerpt,
    "#2  S1003": stu_ex,
    r"#\d+  S1005": pipe_ex,
    "Open batch of ABC214F12345000 (revision": G("batch_list.txt"),
    "Batch S1750007200000 of": G("batch_status.txt"),
    "Batch S1750007200000: ": G("results_80.txt"),
    "When          Student": G("issues_80.txt"),
    "Jun 15, 2025 10:07 CDT  normalize": G("issues_pipe.txt"),
    "Worklist for ": G("todo_80.txt"),
}
for first, new in blocks.items():
    pattern = first if first.startswith("#") else re.escape(first)  # the pipe excerpt's number follows the order
    m = re.search(r"```\n(" + pattern + r".*?)\n```", s, re.S)
    assert m, first
    s = s[: m.start(1)] + new + s[m.end(1) :]
p.write_text(s)
print(f"{p}: captures refreshed")
