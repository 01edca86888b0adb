"""Writes support-chat.jsonl: customer-support conversations (OpenAI `messages`) for configs/chat-sft.yaml.

Deterministic (seeded), so the committed file is exactly what this script writes:
    python configs/data/make_support_chat.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are the support assistant of Northwind Outdoor. Answer briefly and name the next step."
PRODUCTS = [
    "tent",
    "sleeping bag",
    "rain jacket",
    "hiking boots",
    "camping stove",
    "backpack",
    "headlamp",
    "kayak",
]
# (customer's problem, assistant's answer); {p} is the product, {o} the order number, {d} a number of days.
ISSUES = [
    (
        "My {p} from order {o} arrived damaged. What can I do?",
        "Sorry about that. Reply with a photo of the damage and I will send a free replacement for "
        "order {o}; keep the damaged {p} until it arrives.",
    ),
    (
        "Order {o} still has not arrived after {d} days.",
        "Thanks for waiting. Order {o} left our warehouse but has no tracking update; I have opened a "
        "carrier trace and will write to you within 2 working days.",
    ),
    (
        "Can I return the {p} I bought {d} days ago?",
        "Yes: returns are free within 30 days. Use the return label in your account under order {o} and "
        "pack the {p} in its original box.",
    ),
    (
        "The zip on my {p} broke on the first trip.",
        "That is covered by the two-year warranty. Send the {p} to our repair centre with the label I just "
        "emailed you; repairs take about {d} days.",
    ),
    (
        "I was charged twice for order {o}.",
        "I see two payments for order {o}; the second one is a duplicate and I have refunded it. It shows on "
        "your statement within 5 working days.",
    ),
    (
        "Does the {p} fit in carry-on luggage?",
        "It depends on the model: the compact {p} packs to 40 x 20 x 20 cm and fits most airlines' carry-on "
        "limits. Check the size on the product page.",
    ),
    (
        "How do I clean my {p}?",
        "Wipe the {p} with lukewarm water and mild soap, then let it dry in the shade. Never machine-dry it; "
        "the care guide is on the label.",
    ),
    (
        "I want to change the delivery address for order {o}.",
        "Order {o} has not shipped yet, so I can still change it. Reply with the new address and I will "
        "update the shipment today.",
    ),
    (
        "Is the {p} back in stock soon?",
        "The {p} is expected back in about {d} days. Press 'notify me' on the product page and we email you "
        "the day it arrives.",
    ),
    (
        "The {p} I received is the wrong size.",
        "Sorry for the mix-up. Start an exchange under order {o} in your account; we ship the right size as "
        "soon as the carrier scans your return.",
    ),
]
FOLLOW_UPS = [
    ("Thanks, that helps.", "You are welcome. Enjoy your trip!"),
    ("How long will that take?", "Usually {d} working days; you get an email at every step."),
    ("Do I need to print anything?", "No, the carrier scans the code in the email at the drop-off point."),
]


def conversations(n: int = 80, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, answer = ISSUES[i % len(ISSUES)]
        fill = {
            "p": PRODUCTS[(i * 3 + i // len(ISSUES)) % len(PRODUCTS)],
            "o": f"NW-{rng.randint(10000, 99999)}",
        }
        fill["d"] = str(rng.randint(3, 21))
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question.format(**fill)},
            {"role": "assistant", "content": answer.format(**fill)},
        ]
        if i % 2:  # every other conversation has a second turn
            follow, reply = FOLLOW_UPS[(i // 2) % len(FOLLOW_UPS)]
            messages += [
                {"role": "user", "content": follow},
                {"role": "assistant", "content": reply.format(**fill)},
            ]
        rows.append({"messages": messages})
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("support-chat.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in conversations()), encoding="utf-8")
