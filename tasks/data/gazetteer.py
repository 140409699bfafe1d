"""Known first names and surnames of 105 countries (names-dataset, ranked by how many people
carry them), read once from the package and kept as a small casefolded list in the cache.

    python -m tasks.data.gazetteer [NAME ...]   # builds the cache; prints each name's verdict

A name is "known" when it ranks within the top KNOWN_RANK of some country and is ranked in at
least KNOWN_COUNTRIES countries, as a first name or a surname (the list is drawn from a social
network's profiles: a word carried by a handful of people in one country, "Python", "Flask",
"Prefect", is in it too). Known alone does not make a word a name ("Fox", "Street" and "Please" are surnames
somewhere): the recognizers ask for a known name that is also uncommon as a word.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.metadata
import os
import pickle
import sys
from importlib import resources
from pathlib import Path

KNOWN_RANK = 3000  # per-country popularity rank: more finds rarer names and more words that are names somewhere
KNOWN_COUNTRIES = 2  # ranked in this many countries: one alone lets in product names carried by a few people
CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "loragate" / "names"


def _cache_file() -> Path:
    return CACHE / f"names-dataset-{importlib.metadata.version('names-dataset')}-r{KNOWN_RANK}-c{KNOWN_COUNTRIES}.txt"


def _read_package() -> list[str]:
    """Every single-word first name and surname known by the rule above, casefolded (~10 s, 1 GB
    while the package's pickles are open: done once per machine)."""
    names: set[str] = set()
    for kind in ("first_names", "last_names"):
        with resources.files("names_dataset").joinpath(f"v3/{kind}.pkl.gz").open("rb") as raw:
            table = pickle.load(gzip.GzipFile(fileobj=raw))  # the package's own data file, not user input
        names |= {name.casefold() for name, info in table.items()
                  if " " not in name and len(info["rank"]) >= KNOWN_COUNTRIES
                  and min(info["rank"].values()) <= KNOWN_RANK}
        del table
    return sorted(names)


@functools.lru_cache(maxsize=1)
def known_names() -> frozenset[str]:
    """The casefolded known names, built into the cache on first use (written whole, then renamed,
    so a killed build leaves nothing half-written; a cache that cannot be written is rebuilt per run)."""
    path = _cache_file()
    if path.exists():
        return frozenset(path.read_text(encoding="utf-8").split("\n")) - {""}
    names = _read_package()
    partial = path.with_suffix(f".{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("\n".join(names) + "\n", encoding="utf-8")
        partial.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
    return frozenset(names)


def is_known(word: str) -> bool:
    """A known first name or surname (the rule above); possessive "'s" and outer apostrophes ignored."""
    w = word.strip("'’.").casefold()
    return (w[:-2] if w.endswith(("'s", "’s")) else w) in known_names()


def main(argv: list[str]) -> int:
    names = known_names()
    print(f"{len(names)} known names in {_cache_file()}")
    for word in argv:
        print(f"{word}: {'known' if is_known(word) else 'unknown'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
