"""The text measures of the monitor report: a prompt's script and language, and a refusal's opening."""

from __future__ import annotations

from tuneforge.monitor.text import is_refusal, language_mix, language_of, script_mix, script_of


def test_the_script_is_the_one_most_letters_are_written_in() -> None:
    assert script_of("my order is late") == "Latin"
    assert script_of("мой заказ опоздал, order 12") == "Cyrillic"
    assert script_of("طلبي متأخر") == "Arabic"
    assert script_of("我的订单迟到了") == "CJK (Han)"
    assert script_of("ちゅうもん") == "Japanese kana"
    assert script_of("주문이 늦었어요") == "Hangul"
    assert script_of("12 + 30 = 42 !") == "none"
    assert script_mix(["a b", "б в", "c", ""]) == {"Latin": 2, "Cyrillic": 1, "none": 1}


def test_a_refusal_is_recognised_only_at_the_start_of_the_answer() -> None:
    assert is_refusal("I can't help with that.")
    assert is_refusal("  I\u2019m sorry, but I cannot do this")
    assert is_refusal("As an AI language model, I have no opinions")
    assert not is_refusal("Your refund is on its way. I can't wait to hear back!")
    assert not is_refusal("")


def test_the_language_is_detected_offline_and_unsure_texts_say_so() -> None:
    assert language_of("my parcel has not arrived yet, please help me") == "en"
    assert language_of("mein Paket ist noch nicht angekommen, bitte helfen Sie mir") == "de"
    assert language_of("mon colis n'est pas encore arrivé, aidez-moi s'il vous plaît") == "fr"
    assert language_of("mi paquete todavía no ha llegado, ayúdenme por favor") == "es"
    assert language_of("мой заказ опоздал") == "ru"
    assert language_of("12 + 30 = 42 !") == "none"
    assert language_of("ok") == "und"  # too short to name a language
    assert language_of("cancel subscription") == "und"  # py3langid's best guess: Latin, at 0.21
    assert language_mix(["mein Paket ist nicht angekommen", "my order is late again today", ""]) == {
        "de": 1,
        "en": 1,
        "none": 1,
    }


def test_refusals_are_recognised_in_german_french_and_spanish_too() -> None:
    assert is_refusal("Es tut mir leid, aber das kann ich nicht beantworten.")
    assert is_refusal("Leider kann ich Ihnen dabei nicht helfen.")
    assert is_refusal("Je ne peux pas vous aider avec cela.")
    assert is_refusal("Désolé, mais je n\u2019ai pas accès à votre commande.")
    assert is_refusal("Lo siento, pero no tengo acceso a su pedido.")
    assert is_refusal("Como IA, no tengo opiniones.")
    assert not is_refusal("Ihr Paket ist unterwegs, ich kann nicht warten, bis Sie es haben!")
    assert not is_refusal("Votre colis est en route.")
    assert not is_refusal("Su pedido llega mañana.")
