"""The generated language behind ``sparsembed demo``: text with analogies planted by construction.

No downloads: :func:`generate_corpus` writes a few million tokens of synthetic text in seconds,
and :func:`write_analogies` writes the questions that hold in it by construction, in the
``questions-words.txt`` format that ``evaluate_word_analogies`` reads; :func:`legend` says in a few lines what
the made-up words are.

How the structure is planted
----------------------------
The planted words are (concept, attribute) pairs arranged in groups, e.g. ``king``/``queen`` (title ×
gender), ``kelvia``/``kelburg``/``kelmark``/``kelish`` (nation × country/capital/currency/language),
``blick``/``blicks``/``blicked``/``blicking`` (verb × tense), nouns × number and adjectives × degree.
Every sentence is built around one planted word ``w = (c, a)``; each other token of the sentence is drawn
from the *topic* of the concept ``c`` (a fixed set of ordinary words), from the topic of the attribute
``a``, or from the Zipf-distributed background vocabulary. The context distribution of ``w`` is therefore a
mixture whose concept part is shared by every form of ``c`` and whose attribute part is shared by every
word with attribute ``a``; word2vec's implicit PMI matrix then splits into a concept block plus an
attribute block, so ``vec(w) ≈ f(c) + g(a)`` and ``b - a + c`` lands on ``d`` for every planted question.

Topic words are drawn from a band of mid-frequency background words and each serves several topics, so
they stay generic words instead of becoming near-synonyms of one planted word: the nearest neighbours of a
planted word are the other forms of its concept and its same-attribute siblings.

The "world" (names, topics, frequencies) depends only on ``seed``, never on ``n_tokens``, so the questions
written by :func:`write_analogies` match corpora of every size written with the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

__all__ = ["Group", "generate_corpus", "write_analogies", "planted_queries", "planted_groups", "legend"]

# Sentence shape: lengths uniform in [_MIN_LEN, _MAX_LEN]; with window 5 a planted word near the middle
# sees (almost) the whole sentence as context.
_MIN_LEN, _MAX_LEN = 9, 13
# Share of non-planted tokens in a sentence drawn from the concept topic / the attribute topic; the rest
# is Zipf background ("the", "of", pseudo-words), which also gives the vocabulary a realistic shape.
_P_CONCEPT, _P_ATTRIBUTE = 0.35, 0.30
_TOPIC_SIZE = 16  # words per concept / attribute topic
# Ranks of the background words that serve as topic words: frequent pseudo-words, each in ~12 topics so
# none becomes a near-synonym of one planted word. The band starts past the real function words so those
# stay generic.
_TOPIC_BAND = (60, 260)
_N_BACKGROUND = 20_000  # background vocabulary size
_HEAD_RANKS = 1_000  # planted sentences draw background only from the most frequent words
_P_FILLER_SENTENCE = 0.15  # share of sentences that are pure Zipf background
_ZIPF_S = 1.0

# Real function words head the background so generated lines read a little like text.
_FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not this are at from or an which have but "
    "had one were they their has been its there all would more when will so some can no into other "
    "than then also these only them"
).split()

# Title × gender pairs in real English: the classic "king : queen :: man : woman" questions.
_GENDER_PAIRS = (
    ("king", "queen"), ("prince", "princess"), ("duke", "duchess"), ("emperor", "empress"),
    ("lord", "lady"), ("father", "mother"), ("son", "daughter"), ("brother", "sister"),
    ("uncle", "aunt"), ("husband", "wife"), ("boy", "girl"), ("man", "woman"),
    ("nephew", "niece"), ("grandfather", "grandmother"), ("actor", "actress"), ("waiter", "waitress"),
    ("monk", "nun"), ("groom", "bride"), ("god", "goddess"), ("hero", "heroine"),
    ("host", "hostess"), ("stepson", "stepdaughter"), ("grandson", "granddaughter"),
    ("policeman", "policewoman"),
)  # fmt: skip


@dataclass(frozen=True)
class Group:
    """One family of planted words: ``words[i][j]`` is concept ``i`` with attribute ``j``."""

    name: str
    attributes: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    # Analogy sections: (section name, attribute index of a/c, attribute index of b/d).
    sections: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class _World:
    """Everything about the generated language that depends on the seed only (not on the corpus size)."""

    vocab: np.ndarray  # object array of str: background words (rank order) then planted words
    n_background: int
    groups: tuple[Group, ...]
    planted_ids: np.ndarray  # (n_planted,) word id of each planted word
    planted_concept: np.ndarray  # (n_planted,) global concept index
    planted_attribute: np.ndarray  # (n_planted,) global attribute index
    planted_weight: np.ndarray  # (n_planted,) relative frequency of each planted word
    concept_topics: np.ndarray  # (n_concepts, _TOPIC_SIZE) background word ids
    attribute_topics: np.ndarray  # (n_attributes, _TOPIC_SIZE) background word ids
    background_cdf: np.ndarray  # Zipf CDF over the background words


_ONSETS = "b d f g k l m n p r s t v z br dr fl gr kl pl st tr sk".split()
_VOWELS = "a e i o u".split()
_CODAS = "b d g k l m n p r t x sk nd rk lt mp".split()


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str], closed: bool) -> list[str]:
    """``n`` new pronounceable words not in ``taken`` (which is updated).

    ``closed`` words end in a consonant (stems that take suffixes); open ones end in a vowel. The loop runs
    over *words* of a few-thousand-word vocabulary, once per world, not over corpus tokens.
    """
    out: list[str] = []
    while len(out) < n:
        batch = 2 * (n - len(out)) + 16
        n_syll = rng.integers(1, 3, size=batch) if closed else rng.integers(2, 4, size=batch)
        onsets = rng.integers(len(_ONSETS), size=(batch, 3))
        vowels = rng.integers(len(_VOWELS), size=(batch, 3))
        codas = rng.integers(len(_CODAS), size=batch)
        for k in range(batch):
            word = "".join(_ONSETS[onsets[k, j]] + _VOWELS[vowels[k, j]] for j in range(n_syll[k]))
            if closed:
                word += _CODAS[codas[k]]
            if len(word) >= 3 and word not in taken:
                taken.add(word)
                out.append(word)
                if len(out) == n:
                    break
    return out


def _groups(rng: np.random.Generator, taken: set[str]) -> list[Group]:
    """The planted groups of a world, their stems drawn from ``rng`` (which ``taken`` keeps apart)."""

    def stems(n: int) -> list[str]:
        # Derived forms (stem + suffix) must not collide with anything else either.
        out: list[str] = []
        while len(out) < n:
            for stem in _pseudo_words(rng, n - len(out), taken, closed=True):
                forms = [stem + s for s in ("s", "ed", "ing", "er", "est", "ia", "burg", "mark", "ish")]
                if not taken.intersection(forms):
                    taken.update(forms)
                    out.append(stem)
        return out

    return [
        Group(
            "gender",
            ("male", "female"),
            tuple(_GENDER_PAIRS),
            (("family", 0, 1),),
        ),
        Group(
            "nation",
            ("country", "capital", "currency", "language"),
            tuple((s + "ia", s + "burg", s + "mark", s + "ish") for s in stems(30)),
            (("capital-world", 1, 0), ("currency", 0, 2), ("gram6-nationality-adjective", 0, 3)),
        ),
        Group(
            "verb",
            ("base", "third-person", "past", "participle"),
            tuple((s, s + "s", s + "ed", s + "ing") for s in stems(30)),
            (("gram5-present-participle", 0, 3), ("gram7-past-tense", 3, 2), ("gram9-plural-verbs", 0, 1)),
        ),
        Group(
            "noun",
            ("singular", "plural"),
            tuple((s, s + "s") for s in stems(30)),
            (("gram8-plural", 0, 1),),
        ),
        Group(
            "adjective",
            ("positive", "comparative", "superlative"),
            tuple((s, s + "er", s + "est") for s in stems(24)),
            (("gram3-comparative", 0, 1), ("gram4-superlative", 0, 2)),
        ),
    ]


@lru_cache(maxsize=8)
def _world(seed: int) -> _World:
    """Build (and cache) the seed's vocabulary, planted groups, topics and frequencies."""
    rng = np.random.default_rng([seed, 0x5EED])
    taken: set[str] = set(_FUNCTION_WORDS) | {w for pair in _GENDER_PAIRS for w in pair}

    groups = _groups(rng, taken)

    background = list(_FUNCTION_WORDS)
    background += _pseudo_words(rng, _N_BACKGROUND - len(background), taken, closed=False)
    ranks = np.arange(1, _N_BACKGROUND + 1, dtype=np.float64)
    zipf = ranks**-_ZIPF_S
    background_cdf = np.cumsum(zipf / zipf.sum())

    planted, concept, attribute, weight = _planted(groups, rng)
    concept_topics, attribute_topics = _topics(groups, rng)

    vocab = np.array(background + planted, dtype=object)
    if len(set(vocab.tolist())) != len(vocab):  # pragma: no cover - guarded by ``taken`` above
        raise AssertionError("generated vocabulary has duplicates")
    return _World(
        vocab=vocab,
        n_background=_N_BACKGROUND,
        groups=tuple(groups),
        planted_ids=np.arange(_N_BACKGROUND, len(vocab)),
        planted_concept=np.array(concept),
        planted_attribute=np.array(attribute),
        planted_weight=np.array(weight),
        concept_topics=concept_topics,
        attribute_topics=attribute_topics,
        background_cdf=background_cdf,
    )


def _planted(groups: list[Group], rng: np.random.Generator) -> tuple[list[str], list[int], list[int], list[float]]:
    """Every planted word with its global concept and attribute index and its relative frequency."""
    planted, concept, attribute, weight = [], [], [], []
    n_concepts = n_attributes = 0
    for group in groups:
        n_c, n_a = len(group.words), len(group.attributes)
        # Concepts vary in frequency (log-uniform over a factor 3), forms of one concept less so, like text.
        c_weight = np.exp(rng.uniform(np.log(0.6), np.log(1.8), size=n_c))
        a_weight = np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=(n_c, n_a)))
        for i, forms in enumerate(group.words):
            for j, word in enumerate(forms):
                planted.append(word)
                concept.append(n_concepts + i)
                attribute.append(n_attributes + j)
                weight.append(c_weight[i] * a_weight[i, j])
        n_concepts += n_c
        n_attributes += n_a
    return planted, concept, attribute, weight


def _topics(groups: list[Group], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background word ids of every concept's and every attribute's topic."""
    assert _TOPIC_BAND[0] > len(_FUNCTION_WORDS)
    n_concepts = sum(len(group.words) for group in groups)
    n_attributes = sum(len(group.attributes) for group in groups)
    attribute_topics = rng.integers(*_TOPIC_BAND, size=(n_attributes, _TOPIC_SIZE))
    # A word in both a concept's topic and one of its attributes' would co-occur with that planted word
    # twice as often as any other and show up among its neighbours: concept topics avoid the group's
    # attribute-topic words (a loop over the 5 groups).
    concept_topics = np.empty((n_concepts, _TOPIC_SIZE), dtype=np.int64)
    c0 = a0 = 0
    for group in groups:
        n_c, n_a = len(group.words), len(group.attributes)
        allowed = np.setdiff1d(np.arange(*_TOPIC_BAND), attribute_topics[a0 : a0 + n_a])
        concept_topics[c0 : c0 + n_c] = rng.choice(allowed, size=(n_c, _TOPIC_SIZE))
        c0, a0 = c0 + n_c, a0 + n_a
    return concept_topics, attribute_topics


def _allocate(weights: np.ndarray, total: int, rng: np.random.Generator, floor: int = 5) -> np.ndarray:
    """Split ``total`` draws over ``weights`` exactly: ``floor`` each first (so every planted word reaches
    ``min_count`` once the corpus allows it), the rest in proportion by largest remainder."""
    base = min(floor, total // len(weights))
    share = weights / weights.sum() * (total - base * len(weights))
    counts = np.floor(share).astype(np.int64)
    short = total - base * len(weights) - int(counts.sum())
    if short:
        # Ties broken at random so the leftovers do not always go to the same words.
        order = np.lexsort((rng.random(len(weights)), -(share - counts)))
        counts[order[:short]] += 1
    return counts + base


def _token_ids(world: _World, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Word ids of the corpus (flat) and the length of each sentence; exactly ``n_tokens`` tokens."""
    rng = np.random.default_rng([seed, 0xC0A9, n_tokens])
    lengths = rng.integers(_MIN_LEN, _MAX_LEN + 1, size=n_tokens // _MIN_LEN + 1)
    ends = np.cumsum(lengths)
    n_sent = int(np.searchsorted(ends, n_tokens)) + 1
    lengths = lengths[:n_sent]
    lengths[-1] -= int(ends[n_sent - 1]) - n_tokens  # trim the last sentence to hit n_tokens exactly

    # A share of sentences is pure background ("filler"); every other sentence carries one planted word.
    # Planted counts are allocated exactly (no word starved by chance), then shuffled over the sentences.
    planted_sent = np.flatnonzero(rng.random(n_sent) >= _P_FILLER_SENTENCE)
    counts = _allocate(world.planted_weight, len(planted_sent), rng)
    which = np.full(n_sent, -1)
    which[planted_sent] = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    concept = world.planted_concept[which]  # garbage (index -1) for filler sentences, masked below
    attribute = world.planted_attribute[which]

    sent_of_tok = np.repeat(np.arange(n_sent), lengths)
    in_planted = which[sent_of_tok] >= 0

    # Background: full Zipf in filler sentences, only its head in planted ones. Rare words thus never sit
    # next to a planted word, so their noisy vectors do not crowd the planted words' neighbour lists.
    cdf = world.background_cdf
    top = np.where(in_planted, cdf[_HEAD_RANKS - 1], cdf[-1])
    tokens = np.searchsorted(cdf, rng.random(n_tokens) * top)
    tokens = np.minimum(tokens, world.n_background - 1)

    u = rng.random(n_tokens)
    pick = rng.integers(_TOPIC_SIZE, size=n_tokens)
    is_concept = in_planted & (u < _P_CONCEPT)
    is_attr = in_planted & (u >= _P_CONCEPT) & (u < _P_CONCEPT + _P_ATTRIBUTE)
    tokens[is_concept] = world.concept_topics[concept[sent_of_tok[is_concept]], pick[is_concept]]
    tokens[is_attr] = world.attribute_topics[attribute[sent_of_tok[is_attr]], pick[is_attr]]

    # Planted word in the middle of the sentence so both sides of the window fall inside it.
    starts = ends[:n_sent] - lengths
    starts[-1] = n_tokens - lengths[-1]
    offset = np.minimum((lengths * rng.uniform(0.3, 0.7, size=n_sent)).astype(np.int64), lengths - 1)
    tokens[(starts + offset)[planted_sent]] = world.planted_ids[which[planted_sent]]
    return tokens, lengths


def _encode(vocab: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> bytes:
    """Render ids as space-separated words, one sentence per line, with numpy gathers (no token loop)."""
    encoded = [w.encode("utf-8") for w in vocab.tolist()]
    word_len = np.array([len(w) for w in encoded], dtype=np.int64)
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    word_start = np.concatenate(([0], np.cumsum(word_len)[:-1]))

    tok_len = word_len[tokens] + 1  # +1 for the separator after every token
    out_end = np.cumsum(tok_len)
    out_start = out_end - tok_len
    total = int(out_end[-1]) if len(tokens) else 0
    out = np.empty(total, dtype=np.uint8)
    # Position of every output character inside ``blob``: the token's word start + index within the token.
    chars = tok_len - 1
    within = np.arange(int(chars.sum())) - np.repeat(np.cumsum(chars) - chars, chars)
    dest = np.repeat(out_start, chars) + within
    out[dest] = blob[np.repeat(word_start[tokens], chars) + within]
    out[out_end - 1] = ord(" ")
    out[out_end[np.cumsum(lengths) - 1] - 1] = ord("\n")
    return out.tobytes()


def generate_corpus(path: str | os.PathLike, n_tokens: int = 3_000_000, seed: int = 0) -> None:
    """Write the demo corpus: ``n_tokens`` tokens, one sentence per line, lowercase, space-separated.

    The file appears atomically. Same ``(n_tokens, seed)`` → same bytes; about 6 bytes per token and
    ``n_tokens / 11`` lines. Each of the 420 planted words occurs ``n_tokens / 5400`` times on average
    (0.5× to 2×) and at least 5 times (``min_count``) once ``n_tokens`` ≥ 30 000, in sentences whose other
    words come from its concept's and its attribute's topics (see the module docstring).
    """
    if n_tokens < 1:
        raise UserError(f"n_tokens must be at least 1, got {n_tokens}")
    world = _world(seed)
    tokens, lengths = _token_ids(world, n_tokens, seed)
    data = _encode(world.vocab, tokens, lengths)
    with atomic_write(path) as handle:
        handle.write(data)


def _questions(seed: int) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """All planted questions by section: ``a b c d`` with a, b one concept and c, d another."""
    sections = []
    for group in _world(seed).groups:
        for name, src, dst in group.sections:
            qs = [
                (group.words[i][src], group.words[i][dst], group.words[k][src], group.words[k][dst])
                for i in range(len(group.words))
                for k in range(len(group.words))
                if i != k
            ]
            sections.append((name, qs))
    return sections


def write_analogies(path: str | os.PathLike, seed: int = 0) -> int:
    """Write the planted analogy questions in ``questions-words.txt`` format; return how many.

    Sections follow the names of Mikolov's test set (``family``, ``capital-world``, ``gram8-plural``, ...).
    Each section holds every ordered pair of distinct concepts of its group.
    """
    lines: list[str] = []
    count = 0
    for name, qs in _questions(seed):
        lines.append(f": {name}")
        lines.extend(" ".join(q) for q in qs)
        count += len(qs)
    with atomic_write(path) as handle:
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
    return count


def planted_queries(seed: int = 0) -> list[str]:
    """A handful of planted words, one or two per group, whose nearest neighbours the demo prints."""
    groups = {g.name: g for g in _world(seed).groups}
    return [
        "king",
        "woman",
        groups["nation"].words[0][1],  # a capital
        groups["nation"].words[1][2],  # a currency
        groups["verb"].words[0][2],  # a past tense
        groups["noun"].words[0][1],  # a plural
        groups["adjective"].words[0][2],  # a superlative
    ]


def planted_groups(seed: int = 0) -> tuple[Group, ...]:
    """The planted groups of the seed's language: their attributes and words (``words[i][j]``: concept ``i`` with
    attribute ``j``)."""
    return _world(seed).groups


def legend(seed: int = 0) -> list[str]:
    """What the words of the corpus are, in a few lines: each planted group with an example, how a question is
    scored, and what the other words are."""
    lines = []
    for group in planted_groups(seed):
        kind = "real English pairs" if group.name == "gender" else f"made-up {group.name}s"
        example = " / ".join(f"{word} ({attribute})" for word, attribute in zip(group.words[0], group.attributes,
                                                                               strict=True))
        lines.append(f"{group.name}: {len(group.words)} {kind}, e.g. {example}")
    name, qs = next((name, qs) for name, qs in _questions(seed) if name == "capital-world")
    a, b, c, d = qs[0]
    lines.append(f"a question 'a b c d' is right when d is nearest to b - a + c, e.g. '{a} {b} {c} {d}' ({name})")
    lines.append("the other words are made up too (but for a few like 'the'): topics around each planted word, over "
                 "a Zipf background")
    return lines

