"""Known first names and surnames of 105 countries (names-dataset, ranked by how many people
carry them), read once from the package and kept as a small casefolded list in the cache.

    python -m tasks.data.gazetteer [NAME ...]   # builds the cache; prints each name's verdict

A name is "known" when it ranks within the top KNOWN_RANK of some country and is ranked in at
least KNOWN_COUNTRIES countries, as a first name or a surname (the list is drawn from a social
network's profiles: a word carried by a handful of people in one country, "Python", "Flask",
"Prefect", is in it too), or when it ranks so in one of the countries whose people we serve
(SERVED) and is rare as a word (names of one country: "Ksawery", "Klementyna"). Known alone does
not make a word a name ("Fox", "Street" and "Please" are surnames somewhere): the recognizers ask
for a known name that is also uncommon as a word.
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
# ... unless that one is a country we serve (EU/EEA, UK, CH, US, CA, AU) and the name is no word
# (wordfreq zipf below SERVED_ZIPF in its languages): "Ksawery" in, "Please" and "Python" out
SERVED = frozenset("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE GB US CA CH NO "
                   "IS AU".split())
SERVED_ZIPF = 3.0
LEXICON_LANGS = ("en", "de", "fr", "pl", "es", "it", "nl")  # the word lists (wordfreq) a name must be rare in
CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "loragate" / "names"


def _cache_file() -> Path:
    return CACHE / (f"names-dataset-{importlib.metadata.version('names-dataset')}-r{KNOWN_RANK}-c{KNOWN_COUNTRIES}"
                    f"-s{SERVED_ZIPF}.txt")


def _read_package() -> list[str]:
    """Every single-word first name and surname known by the rule above, casefolded (~10 s, 1 GB
    while the package's pickles are open: done once per machine)."""
    names: set[str] = set()
    for kind in ("first_names", "last_names"):
        with resources.files("names_dataset").joinpath(f"v3/{kind}.pkl.gz").open("rb") as raw:
            table = pickle.load(gzip.GzipFile(fileobj=raw))  # the package's own data file, not user input
        names |= {name.casefold() for name, info in table.items() if " " not in name and _known(info["rank"], name)}
        del table
    return sorted(names)


def _known(ranks: dict[str, int], name: str) -> bool:
    from wordfreq import zipf_frequency

    if not ranks or min(ranks.values()) > KNOWN_RANK:
        return False
    if len(ranks) >= KNOWN_COUNTRIES:
        return True
    return any(c in SERVED and r <= KNOWN_RANK for c, r in ranks.items()) and all(
        zipf_frequency(name, lang) < SERVED_ZIPF for lang in LEXICON_LANGS)


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
