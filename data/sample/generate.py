"""Seeded generator of the bundled sample: support-ticket triage with personal data in the inputs.

    python data/sample/generate.py            # writes data/sample/tickets.jsonl (640 records)

Each record is a chat `messages` conversation: a customer message that carries realistic personal
data (name, e-mail, phone, IBAN, street address) and an assistant reply in a fixed four-line
triage format that holds none. The format is what fine-tuning teaches; the base model does not
know it. `generate()` also returns the personal values it injected, so tests can prove that none
of them survive anonymization.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from faker import Faker

SYSTEM = "You triage customer support tickets. Answer in the four-line triage format."

# category -> (action, message templates); {product} and the personal slots are filled per record.
CATEGORIES: dict[str, tuple[str, list[str]]] = {
    "billing_refund": ("issue_refund", [
        "I was charged twice for my {product} this month. Please refund the extra payment to {iban}.",
        "My {product} renewal was billed although I cancelled. Refund it to my account {iban}, please.",
    ]),
    "payment_update": ("update_payment_details", [
        "Please change the bank account for my {product} direct debit to {iban}.",
        "New IBAN for the {product} payments: {iban}. The old account is closed.",
    ]),
    "address_change": ("update_address", [
        "I moved. Please send the {product} invoices to {address} from now on.",
        "My new postal address is {address}. Update it for the {product} contract.",
    ]),
    "account_access": ("reset_credentials", [
        "I cannot log in to my {product} account since yesterday, the password reset mail never arrives at {email}.",
        "Locked out of {product}. Reset link to {email} does not work.",
    ]),
    "delivery_issue": ("track_shipment", [
        "The {product} I ordered has not arrived at {address}. Where is it?",
        "Tracking for my {product} has not moved for a week. Delivery address is {address}.",
    ]),
    "cancellation": ("process_cancellation", [
        "Please cancel my {product} at the end of the month and confirm by e-mail to {email}.",
        "I want to end the {product} contract. Confirm the cancellation at {email}.",
    ]),
    "technical_fault": ("open_technical_case", [
        "The {product} keeps disconnecting every few minutes. Call me back on {phone}.",
        "My {product} shows error 504 after the update. You can reach me at {phone}.",
    ]),
    "callback_request": ("schedule_callback", [
        "Could someone from sales call me on {phone} about upgrading my {product}?",
        "I have questions about the {product} offer. Please ring {phone} tomorrow morning.",
    ]),
}
PRODUCTS = ["fibre plan", "mobile plan", "premium plan", "smart router", "tv package", "cloud backup"]
URGENT = ["This is urgent.", "I need this sorted today.", "Please treat this as urgent, it is blocking my work."]
CALM = ["Thanks in advance.", "No rush.", "Thank you."]
OPENERS = ["Hello, this is {name}.", "Hi, my name is {name}.", "Dear support, {name} here.", "Good morning, I am {name}."]
SIGNOFFS = ["Regards, {name}", "Best, {name}", "Kind regards, {name}", "Thanks, {name}"]


def _person(rng: random.Random, fake: Faker) -> dict[str, str]:
    """One customer's personal values, in the formats our users' tickets carry."""
    return {
        "name": f"{fake.first_name()} {fake.last_name()}",
        "email": fake.free_email(),
        "phone": fake.numerify(rng.choice(["+44 7### ######", "+49 151 ########", "(###) ###-####"])),
        "iban": fake.iban(),
        "address": f"{fake.building_number()} {fake.street_name()}, {fake.postcode()} {fake.city()}",
    }


def _record(rng: random.Random, fake: Faker) -> tuple[dict, list[str]]:
    category = rng.choice(sorted(CATEGORIES))
    action, templates = CATEGORIES[category]
    person, product, urgent = _person(rng, fake), rng.choice(PRODUCTS), rng.random() < 0.4
    template = rng.choice(templates)
    body = template.format(product=product, **person)
    text = " ".join([rng.choice(OPENERS).format(**person), body,
                     rng.choice(URGENT if urgent else CALM), rng.choice(SIGNOFFS).format(**person)])
    answer = (f"category: {category}\npriority: {'high' if urgent else 'normal'}\n"
              f"product: {product}\naction: {action}")
    used = [v for k, v in person.items() if "{" + k + "}" in template or k == "name"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                {"role": "assistant", "content": answer}]
    return {"messages": messages}, used


def generate(n: int = 640, seed: int = 7) -> tuple[list[dict], set[str]]:
    """n records and the set of personal values injected into them (deterministic in seed)."""
    rng = random.Random(seed)
    fake = Faker("en_GB")
    fake.seed_instance(seed)
    records, values = [], set()
    for _ in range(n):
        record, used = _record(rng, fake)
        records.append(record)
        values.update(used)
    return records, values


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("tickets.jsonl")
    records, _ = generate()
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {len(records)} records to {out}")


if __name__ == "__main__":
    main(sys.argv)
