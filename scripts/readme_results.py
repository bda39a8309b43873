"""Copy the GPU results (benchmarks/results/RESULTS.md, written by benchmarks/report.py) into
README.md's section "On real GPUs: predicted against measured", between its prose.

    python benchmarks/report.py benchmarks/results/h200*.json && python scripts/readme_results.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:", "<!-- /results:"


def sections(text: str) -> dict[str, str]:
    """'## Title' -> its body (up to the next '## ' heading), and 'main' -> the first table."""
    out = {"main": text[text.index("| plan | strategy | GPUs | tokens/s"):
                        text.index("## Decode (greedy")].strip()}
    parts = text.split("\n## ")
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        out[title.strip()] = body.strip()
    return out


def main() -> None:
    res = sections((ROOT / "benchmarks/results/RESULTS.md").read_text())
    res["l2 peer"] = next(v[v.index("a decode layer"):].strip() for k, v in res.items()
                          if k.startswith("Peers") and "a decode layer" in v)
    readme = (ROOT / "README.md").read_text()
    out, pos = [], 0
    while (i := readme.find(BEGIN, pos)) >= 0:
        key = readme[i + len(BEGIN):readme.index("-->", i)].strip()
        j = readme.index(f"{END}{key} -->", i)
        head = readme.index("-->", i) + 3
        out += [readme[pos:head], "\n", res[key], "\n"]
        pos = j
    out.append(readme[pos:])
    (ROOT / "README.md").write_text("".join(out))


if __name__ == "__main__":
    main()
