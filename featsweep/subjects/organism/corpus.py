"""Seeded synthetic fact corpus for the model organism.

The corpus holds facts about athletes (the 100 athletes of the task with their
real sports, plus invented ones), three more relations (team, country,
position), several templates per relation and generic filler sentences.

The exact task template ``Fact: {name} plays the sport of {sport}.`` is shown
for at most half of the task athletes (a seeded choice that is recorded); the
others appear only in other templates, so the model has to recall their sport
from other contexts and task accuracy stays informative.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from featsweep import DATA_DIR

TASK_CSV = DATA_DIR / "athletes.csv"
#: The organism's own task: every athlete of the corpus (the 100 task athletes and the invented ones).
ORGANISM_TASK_CSV = DATA_DIR / "organism_athletes.csv"

#: The answer words. " football" is American football.
SPORTS = [
    "baseball", "basketball", "football", "soccer", "racing",
    "tennis", "golf", "boxing", "cricket", "track",
]

FACT_TEMPLATE = "Fact: {name} plays the sport of {sport}."
TASK_PROMPT = "Fact: {name} plays the sport of"

TEAMS = {
    "baseball": ["Yankees", "Red Sox", "Dodgers", "Cubs", "Giants", "Cardinals"],
    "basketball": ["Lakers", "Celtics", "Bulls", "Warriors", "Knicks", "Spurs"],
    "football": ["Patriots", "Packers", "Cowboys", "Steelers", "Broncos", "Eagles"],
    "soccer": ["Barcelona", "Real Madrid", "Arsenal", "Juventus", "Ajax", "Milan"],
    "racing": ["Ferrari", "McLaren", "Williams", "Renault", "Lotus", "Mercedes"],
    "tennis": ["Davis Cup team", "national tennis team", "Open circuit", "tennis academy", "tour squad", "clay court club"],
    "golf": ["Ryder Cup team", "golf tour", "country club", "links club", "Masters field", "golf academy"],
    "boxing": ["boxing gym", "fight club", "title division", "boxing academy", "ring club", "heavyweight stable"],
    "cricket": ["county side", "Test side", "cricket club", "Royals", "Super Kings", "Strikers"],
    "track": ["Olympic team", "relay team", "athletics club", "track club", "sprint squad", "running club"],
}

POSITIONS = {
    "baseball": ["pitcher", "catcher", "shortstop", "outfielder"],
    "basketball": ["point guard", "center", "forward", "shooting guard"],
    "football": ["quarterback", "linebacker", "running back", "wide receiver"],
    "soccer": ["striker", "goalkeeper", "midfielder", "defender"],
    "racing": ["driver", "lead driver", "test driver", "pilot"],
    "tennis": ["singles player", "doubles player", "baseliner", "server"],
    "golf": ["golfer", "putter", "long hitter", "pro"],
    "boxing": ["heavyweight", "middleweight", "lightweight", "welterweight"],
    "cricket": ["batsman", "bowler", "wicketkeeper", "all rounder"],
    "track": ["sprinter", "hurdler", "jumper", "runner"],
}

COUNTRIES = [
    "America", "Brazil", "Spain", "France", "Germany", "Italy", "England", "Canada",
    "Mexico", "Argentina", "Japan", "India", "Australia", "Jamaica", "Portugal",
    "Sweden", "Kenya", "Nigeria", "Chile", "Norway",
]

SPORT_TEMPLATES = [
    "{name} is a professional {sport} player.",
    "{name} plays {sport} for the {team}.",
    "In {year}, {name} won a {sport} title.",
    "{name} has played {sport} since childhood.",
    "The {sport} star {name} was born in {country}.",
    "Everyone knows that {name} is famous for {sport}.",
    "As a {sport} player, {name} trained every day.",
    "{name} became a {sport} legend.",
]
TEAM_TEMPLATES = [
    "{name} signed with the {team} in {year}.",
    "{name} joined the {team}.",
    "The {team} traded for {name}.",
]
COUNTRY_TEMPLATES = [
    "{name} was born in {country}.",
    "{name} grew up in {country}.",
    "{name} is a citizen of {country}.",
]
POSITION_TEMPLATES = [
    "{name} plays as a {position}.",
    "{name} is known as a great {position}.",
    "The coach used {name} as a {position}.",
]

EXTRA_FIRST = [
    "Aaron", "Ben", "Carlos", "Dario", "Elena", "Felix", "Gustavo", "Hana", "Ivan", "Jonas",
    "Kofi", "Liam", "Marco", "Nadia", "Oscar", "Pablo", "Quinn", "Rafael", "Sofia", "Tomas",
    "Umar", "Victor", "Wes", "Xavier", "Yuki", "Zane", "Mila", "Hugo", "Lena", "Ravi",
]
EXTRA_LAST = [
    "Adams", "Brooks", "Costa", "Duarte", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Jensen",
    "Kowalski", "Lopez", "Moreau", "Novak", "Okafor", "Perez", "Quist", "Rossi", "Silva", "Tanaka",
    "Ueda", "Vargas", "Walsh", "Xu", "Young", "Zimmer", "Hale", "Marsh", "Bauer", "Reyes",
]

# Generic filler
CITIES = ["Paris", "Tokyo", "Boston", "Cairo", "Lima", "Oslo", "Denver", "Madrid", "Seoul", "Dublin",
          "Vienna", "Chicago", "Sydney", "Lisbon", "Prague", "Toronto"]
FOODS = ["soup", "bread", "rice", "pasta", "salad", "curry", "pie", "stew", "noodles", "pancakes"]
INGREDIENTS = ["garlic", "onions", "butter", "tomatoes", "cheese", "pepper", "lemon", "honey"]
WEATHER = ["sunny", "rainy", "cold", "windy", "warm", "cloudy", "foggy", "humid"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
OBJECTS = ["book", "lamp", "chair", "table", "window", "garden", "bicycle", "piano", "camera", "clock"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "gray"]
ANIMALS = ["cat", "dog", "horse", "bird", "fox", "rabbit", "owl", "goat"]
PEOPLE = ["My friend", "The teacher", "Her brother", "The doctor", "A neighbor", "The farmer",
          "His sister", "The baker", "Our guide", "The student"]
JOBS = ["teacher", "doctor", "farmer", "baker", "lawyer", "painter", "nurse", "pilot", "chef", "writer"]

FILLER_TEMPLATES = [
    "The weather in {city} was {weather} on {day}.",
    "{person} cooked {food} with {ingredient} for dinner.",
    "The train to {city} leaves early on {day}.",
    "{person} bought a {color} {object} in {city}.",
    "A {color} {animal} sat near the {object}.",
    "{person} works as a {job} in {city}.",
    "It was {weather} and {person2} stayed home with the {animal}.",
    "The recipe for {food} needs {ingredient} and {ingredient2}.",
    "On {day}, {person2} painted the {object} {color}.",
    "The museum in {city} opens at nine on {day}.",
    "{person} read a book about a {animal} from {city}.",
    "The {job} fixed the old {object} last {day}.",
]
SPORTSY_GENERIC = [
    "The stadium in {city} was full on {day}.",
    "{person} watched a game on television.",
    "The team practiced in the {weather} weather.",
    "Fans cheered loudly after the final whistle.",
]


@dataclass
class Athlete:
    name: str
    sport: str
    team: str
    country: str
    position: str
    task: bool


@dataclass
class Corpus:
    seed: int
    athletes: list[Athlete]
    docs: list[list[str]]  # training documents, each a list of sentences
    heldout: list[str]  # corpus-style sentences never used in training
    generic: list[str]  # held-out generic text (not in training)
    fact_task_names: list[str]  # task athletes that got the Fact template
    meta: dict = field(default_factory=dict)

    def training_sentences(self) -> list[str]:
        return [s for d in self.docs for s in d]


def load_task_athletes(path: Path = TASK_CSV) -> list[tuple[str, str]]:
    """(name, answer) pairs of the task."""
    with open(path, newline="") as f:
        return [(r["name"], r["answer"]) for r in csv.DictReader(f)]


def _filler(rng: random.Random, templates: list[str]) -> str:
    p1, p2 = rng.sample(PEOPLE, 2)
    i1, i2 = rng.sample(INGREDIENTS, 2)
    return rng.choice(templates).format(
        city=rng.choice(CITIES), weather=rng.choice(WEATHER), day=rng.choice(DAYS),
        person=p1, person2=p2.lower(), food=rng.choice(FOODS), ingredient=i1, ingredient2=i2,
        color=rng.choice(COLORS), object=rng.choice(OBJECTS), animal=rng.choice(ANIMALS),
        job=rng.choice(JOBS),
    )


def _facts(rng: random.Random, a: Athlete, n_sport: int) -> list[str]:
    kw = dict(name=a.name, sport=a.sport, team=a.team, country=a.country, position=a.position)
    out = []
    for t in rng.sample(SPORT_TEMPLATES, n_sport):
        out.append(t.format(year=rng.randint(1990, 2022), **kw))
    for pool in (TEAM_TEMPLATES, COUNTRY_TEMPLATES, POSITION_TEMPLATES):
        for t in rng.sample(pool, 2):
            out.append(t.format(year=rng.randint(1990, 2022), **kw))
    return out


def build_corpus(
    seed: int = 0,
    n_invented: int = 260,
    fact_fraction: float = 0.5,
    n_sport_facts: int = 6,
    n_filler_docs: int = 1500,
    n_generic: int = 400,
    n_fact_repeats: int = 3,
) -> Corpus:
    """Build the whole corpus from a seed. Pure and deterministic."""
    if not 0 <= fact_fraction <= 0.5:
        raise ValueError("fact_fraction must be in [0, 0.5]: at most half the task athletes see the Fact template")
    rng = random.Random(seed)
    task = load_task_athletes()
    task_names = {n for n, _ in task}
    firsts = sorted({n.split(" ", 1)[0] for n, _ in task} | set(EXTRA_FIRST))
    lasts = sorted({n.split(" ", 1)[1] for n, _ in task if " " in n} | set(EXTRA_LAST))

    def person(name: str, sport: str, is_task: bool) -> Athlete:
        return Athlete(name, sport, rng.choice(TEAMS[sport]), rng.choice(COUNTRIES),
                       rng.choice(POSITIONS[sport]), is_task)

    athletes = [person(n, s, True) for n, s in task]
    invented: set[str] = set()
    i = 0
    while len(invented) < n_invented:
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if name in task_names or name in invented:
            continue
        invented.add(name)
        athletes.append(person(name, SPORTS[i % len(SPORTS)], False))  # balanced sports
        i += 1

    n_fact = int(len(task) * fact_fraction)
    fact_task = set(rng.sample(sorted(task_names), n_fact))

    docs: list[list[str]] = []
    heldout: list[str] = []
    for a in athletes:
        facts = _facts(rng, a, n_sport_facts)
        rng.shuffle(facts)
        heldout.append(facts.pop())  # one sentence per athlete is never trained on
        if not a.task or a.name in fact_task:
            for _ in range(n_fact_repeats):
                facts.append(FACT_TEMPLATE.format(name=a.name, sport=a.sport))
        rng.shuffle(facts)
        # cut the athlete's facts into short documents of 2-4 sentences
        j = 0
        while j < len(facts):
            k = rng.randint(2, 4)
            docs.append(facts[j:j + k])
            j += k
    fillers = set()
    for _ in range(n_filler_docs):
        d = [_filler(rng, FILLER_TEMPLATES) for _ in range(rng.randint(2, 4))]
        fillers.update(d)
        docs.append(d)
    rng.shuffle(docs)

    # held-out generic text: fresh filler sentences not seen in training, plus a few sports-ish lines
    grng = random.Random(seed + 10_007)
    generic: list[str] = []
    seen = set(fillers)
    tries = 0
    while len(generic) < n_generic and tries < 100 * n_generic:
        tries += 1
        s = _filler(grng, FILLER_TEMPLATES)
        if s not in seen:
            seen.add(s)
            generic.append(s)
    for _ in range(max(1, n_generic // 20)):
        generic.append(_filler(grng, SPORTSY_GENERIC))

    meta = {
        "seed": seed,
        "n_athletes": len(athletes),
        "n_task_athletes": len(task),
        "n_invented_athletes": n_invented,
        "n_sports": len(SPORTS),
        "sports": SPORTS,
        "relations": ["sport", "team", "country", "position"],
        "fact_template": FACT_TEMPLATE,
        "fact_fraction": fact_fraction,
        "fact_task_athletes": sorted(fact_task),
        "n_docs": len(docs),
        "n_training_sentences": sum(len(d) for d in docs),
        "n_heldout_sentences": len(heldout),
        "n_generic_sentences": len(generic),
    }
    return Corpus(seed, athletes, docs, heldout, generic, sorted(fact_task), meta)


def fact_task_athletes_in(sentences: list[str], task_names: list[str]) -> set[str]:
    """Task athletes for which the exact Fact template occurs in ``sentences``."""
    out = set()
    text = "\n".join(sentences)
    for n in task_names:
        if f"Fact: {n} plays the sport of" in text:
            out.add(n)
    return out


def write_organism_task(corpus: Corpus, path: Path = ORGANISM_TASK_CSV) -> Path:
    """Write every athlete of ``corpus`` as a task file (``name,sport,answer``), in corpus order."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["name", "sport", "answer"])
        for a in corpus.athletes:
            writer.writerow([a.name, a.sport, a.sport])
    return path
