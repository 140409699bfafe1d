"""Synthetic personal-data benchmark: support messages in five Faker locales with every injected
value's character span, so recall and precision can be measured per entity type.

    python data/sample/pii_synth.py [N] [OUT.jsonl]   # default 2,000 records -> bench/results/pii_synth.jsonl

Each record: {"locale", "text", "spans": [{"start", "end", "type"}]}. Messages also carry
look-alikes that are not personal data (order numbers, amounts, plain dates, versions, office
cities), so precision means something. Everything is seeded: same N and seed, same file.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from faker import Faker

LOCALES = ("en_US", "en_GB", "de_DE", "pl_PL", "fr_FR")
TITLES = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Mr", "Dr")
SUFFIXES = ("Jr.", "Sr.", "III", "PhD", "MD")

# type -> phrasings; {v} is the value. Names also appear mid-sentence, not only in greetings.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "PERSON": ("Hi, I'm {v}.", "Kind regards, {v}", "Please forward this to {v}, our office manager.",
               "{v} from accounts asked me to write to you.", "The parcel was signed for by {v} yesterday.",
               "My colleague {v} will pick it up.", "This is {v} again.", "Contact person: {v}.",
               "I spoke to {v} on the phone last week.", "Thanks, {v}"),
    "EMAIL_ADDRESS": ("Write to me at {v}.", "My e-mail is {v}", "Send the invoice to {v}, please.",
                      "Reset link to {v} never arrived."),
    "PHONE_NUMBER": ("Call me on {v}.", "You can reach me at {v} after 5pm.", "My mobile: {v}",
                     "Phone {v}, ask for the IT desk."),
    "IBAN_CODE": ("Please refund to {v}.", "New IBAN for the direct debit: {v}", "Account {v} is closed now."),
    "CREDIT_CARD": ("Charge it to my card {v}.", "I paid with card {v} and got charged twice.",
                    "Card number {v} was blocked."),
    "IP_ADDRESS": ("The router log shows logins from {v}.", "My static IP is {v}.", "Blocked address: {v}"),
    "STREET_ADDRESS": ("I moved to {v} last month.", "Deliver to {v}, please.", "My address is {v}.",
                       "The parcel went to {v} instead."),
    "DATE_OF_BIRTH": ("I was born on {v}.", "Date of birth: {v}", "DOB {v}, if you need it for verification.",
                      "My birthday is {v}."),
    "PL_PESEL": ("My PESEL is {v}.", "PESEL: {v}", "numer PESEL {v} for the contract."),
    "PL_NIP": ("Invoice our company, NIP {v}.", "VAT number (NIP): {v}", "NIP {v}, please put it on the bill."),
    "DE_TAX_ID": ("My Steuer-ID is {v}.", "Steuerliche Identifikationsnummer: {v}", "tax ID (IdNr) {v}"),
}
LOCAL_TYPES = {"pl_PL": ("PL_PESEL", "PL_NIP"), "de_DE": ("DE_TAX_ID",)}
DISTRACTORS = ("Order #{order} is still pending.", "I was billed {amount} instead of {amount2}.",
               "The outage started on {date} at {time}.", "Firmware {version} did not help.",
               "Ticket TK-{ticket} was closed without an answer.", "Our {city} office has the same problem.",
               "Model RT-{model} restarts every {minutes} minutes.", "I have been a customer since {year}.")


def de_tax_id(rng: random.Random) -> str:
    """A valid-format Steuer-IdNr: 11 digits, first not 0, one digit repeated, ISO 7064 Mod 11,10."""
    while True:
        digits = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(9)]
        if max(digits.count(d) for d in digits) in (2, 3):
            break
    product = 10
    for d in digits:
        total = (d + product) % 10 or 10
        product = total * 2 % 11
    return "".join(map(str, digits)) + str((11 - product) % 10)


def _grouped(value: str, rng: random.Random) -> str:
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def _address(fake: Faker, locale: str) -> str:
    street = fake.street_address().replace("\n", " ")
    if locale == "en_US":
        return f"{street}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}"
    if locale == "en_GB":
        return f"{fake.building_number()} {fake.street_name()}, {fake.city()} {fake.postcode()}"
    if locale == "de_DE":
        return f"{fake.street_name()} {fake.building_number()}, {fake.postcode()} {fake.city()}"
    return f"{street}, {fake.postcode()} {fake.city()}"  # pl_PL, fr_FR


def _date(fake: Faker, rng: random.Random) -> str:
    d = fake.date_of_birth(minimum_age=18, maximum_age=90)
    return rng.choice((d.strftime("%Y-%m-%d"), d.strftime("%d.%m.%Y"), d.strftime("%d/%m/%Y"),
                       d.strftime("%B %d, %Y"), f"{d.day} {d.strftime('%B %Y')}"))


def _person(fake: Faker, rng: random.Random) -> str:
    name = f"{fake.first_name()} {fake.last_name()}"
    if rng.random() < 0.25:
        name = f"{rng.choice(TITLES)} {name}"
    if rng.random() < 0.15:
        name = f"{name} {rng.choice(SUFFIXES)}"
    return name


def value(kind: str, fake: Faker, locale: str, rng: random.Random) -> str:
    if kind == "PERSON":
        return _person(fake, rng)
    if kind == "STREET_ADDRESS":
        return _address(fake, locale)
    if kind == "DATE_OF_BIRTH":
        return _date(fake, rng)
    if kind == "DE_TAX_ID":
        return de_tax_id(rng)
    if kind == "IBAN_CODE":
        return _grouped(fake.iban(), rng)
    if kind == "CREDIT_CARD":
        return _grouped(fake.credit_card_number(), rng)
    if kind == "IP_ADDRESS":
        return fake.ipv4_public() if rng.random() < 0.8 else fake.ipv6()
    method = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone_number", "PL_PESEL": "pesel", "PL_NIP": "nip"}[kind]
    return getattr(fake, method)()


def _distractor(fake: Faker, rng: random.Random) -> str:
    return rng.choice(DISTRACTORS).format(
        order=rng.randint(10**7, 10**8), amount=f"€{rng.randint(5, 300)}.{rng.randint(10, 99)}",
        amount2=f"€{rng.randint(5, 300)}", date=fake.date_this_year().strftime("%d.%m.%Y"),
        time=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", version=f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        ticket=rng.randint(1000, 99999), city=fake.city(), model=f"AX{rng.randint(10, 99)}U",
        minutes=rng.randint(2, 30), year=rng.randint(1998, 2024))


def record(fake: Faker, locale: str, rng: random.Random) -> dict:
    kinds = [k for k in TEMPLATES if k not in {t for ts in LOCAL_TYPES.values() for t in ts}]
    kinds += LOCAL_TYPES.get(locale, ())
    picks = rng.sample(kinds, rng.randint(1, 3))
    parts = [(k, rng.choice(TEMPLATES[k])) for k in picks] + [(None, _distractor(fake, rng))]
    rng.shuffle(parts)
    text, spans = "", []
    for kind, template in parts:
        text += " " if text else ""
        if kind is None:
            text += template
            continue
        v = value(kind, fake, locale, rng)
        head, _, tail = template.partition("{v}")
        spans.append({"start": len(text) + len(head), "end": len(text) + len(head) + len(v), "type": kind})
        text += head + v + tail
    return {"locale": locale, "text": text, "spans": spans}


def generate(n: int = 2000, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    for i, fake in enumerate(fakes.values()):
        fake.seed_instance(seed + i)
    return [record(fakes[LOCALES[i % len(LOCALES)]], LOCALES[i % len(LOCALES)], rng) for i in range(n)]


def main(argv: list[str]) -> int:
    from tasks.io import write_jsonl

    n = int(argv[1]) if len(argv) > 1 else 2000
    out = Path(argv[2]) if len(argv) > 2 else Path("bench/results/pii_synth.jsonl")
    rows = generate(n)
    write_jsonl(out, rows)
    print(f"pii_synth: {len(rows)} records, {sum(len(r['spans']) for r in rows)} spans -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
