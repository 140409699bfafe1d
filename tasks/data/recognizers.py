"""The personal-data recognizers loragate adds to presidio's, and the lean spaCy engine.

    python -m bench.pii_quality    # recall/precision per entity type on 2,000 synthetic records

presidio brings e-mail, IBAN, card, IP, phone (libphonenumber), PESEL and German tax ID recognizers;
here they are tuned for our users' data (EU phone regions, spaced tax IDs, PESEL only as a whole
word) and joined by NIP, dates of birth, titled names and full street addresses. Every recognizer
carries a version, reported with each run. Our patterns are case-sensitive on purpose: capitals
are what tells a street or a name from ordinary words.
"""
from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import regex
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.pl import nip, pesel
from stdnum.us import ssn

from tasks.config import PiiConfig
from tasks.data.gazetteer import LEXICON_LANGS, is_known, known_names

VERSION = "3.16"  # bump when a pattern changes: reports name it, so scores stay traceable
FLAGS = regex.DOTALL | regex.MULTILINE  # presidio's default adds IGNORECASE; ours need case
PHONE_REGIONS = PiiConfig().phone_regions  # params' default, for callers without a config

# a name word; the prefixes carry a second capital ("MacMahon", "O'Brien", "L'Heureux", "DeShawn")
_NAME_WORD = r"(?:(?:Ma?c|O['’]|[DdLl]['’]|De|Di|Da|Du|La|Le)(?=\p{Lu}))?\p{Lu}[\p{Ll}'’]+"
_NAME = rf"{_NAME_WORD}(?:-{_NAME_WORD})?"
# Honorifics and titles in the languages we serve; a name after one is masked whole, with it.
# Polish ones are lower-case mid-sentence and declined ("pan Aleks", "panią Nowak", "panu Kowalskiemu").
_TITLE = (r"(?:[Pp]an(?:i|a|u|em|ią|ie)?|[Pp]aństw[ao]|Herrn?|Frau|M\.|Mme\.?|Mlle\.?|Monsieur|Madame|Mademoiselle|"
          r"Sr\.|Sra\.|Srta\.|(?:mrs?|ms|dr)\.|Señora?|Señorita|Doña|Sig\.(?:ra)?|Signora?|Dhr\.|Mevr\.|Mr\.?|Mrs\.?|Ms\.?|Mx\.?|"
          r"Miss|Dr\.?|(?:Univ\.[ -]?)?Prof\.?|Sir|Dame|Lady|Lord|Dipl\.-\p{Lu}\p{Ll}*\.|Ing\.|Mag\.|Dott\.(?:ssa)?)")
_PARTICLE = r"(?:von|van|der|den|de|du|del|della|di|da|dos|la|le|ten|ter|zu|y)"
_IS_PARTICLE = regex.compile(rf"^{_PARTICLE}$", regex.IGNORECASE)
# generational suffixes and degrees written after a name ("Anna Nowak MBA", "Jan Kos B.Sc.")
_SUFFIX = r"(?:Jr|Sr|II|III|IV|PhD|Ph\.D|MD|DVM|DDS|RN|CPA|Esq|MBA|B\.A|M\.A|B\.Sc|M\.Sc|B\.Eng|M\.Eng|LL\.M|LL\.B|Dipl\.-\p{Lu}\p{Ll}*)\.?"
_FULL_NAME = rf"(?:{_TITLE}\s)?{_NAME}(?:\s{_NAME}){{1,2}}(?:,?\s{_SUFFIX})?"
# A name right after an introduction, a sign-off or a cue that a person follows.
_CUED_NAME = (r"(?:\b(?:[Mm]y name is|[Tt]his is|I am|I'm|[Cc]olleague|[Pp]erson:|[Ss]poke to|signed for by|"
              r"[Aa]sk for|[Ff]orward this to|[Ss]igned,)\s+|(?:[Rr]egards|[Bb]est|[Tt]hanks|[Ss]incerely|"
              rf"[Cc]heers),\s+)(?P<v>{_FULL_NAME})")
# ...and a name right before one: "Anna Nowak from accounts asked", "Connor Baker here".
_NAME_THEN_CUE = (rf"(?P<v>{_FULL_NAME})\s(?:from\s(?:the\s)?(?:\p{{Ll}}+|IT|HR)\b|here\b|(?:asked|said|called|wrote|told|"
                  r"signed|promised)\s)")
_TITLED_NAME = (rf"(?<![\w.])(?P<v>{_TITLE}\s(?:{_PARTICLE}\s)?{_NAME}(?:\s(?:{_PARTICLE}\s)?{_NAME}){{0,2}}"
                 rf"(?:,?\s{_SUFFIX})?)(?!\w)")

# A lone first name after a cue that a name follows: "Name: Anna", "call me Aleks", "Dear Zofia".
_SINGLE_CUE = (r"(?:\b(?:[Mm]y name is|[Nn]ame is|[Nn]ame:|[Nn]ame\?|[Cc]all(?:s|ed)? me|(?:[Cc]alled|[Nn]amed)(?: him| her| them)?|"
               r"[Hh]i|[Hh]ello|[Dd]ear|(?:[Mm]y|[Oo]ur) (?:kid|son|daughter|child|wife|husband|partner|brother|sister|"
               r"mother|father|mom|mum|dad|friend|boss|colleague|cousin|aunt|uncle|grandson|granddaughter|nephew|niece)|"
               r"(?:said|asked|replied|wrote|whispered|shouted)|(?<=(?:said|asked|replied|wrote|whispered|shouted)(?: \S+){1,3} )to|"
               r"[Hh]ey|[Uu]nder|[Ss]peak to|[Tt]alk to|[Aa]sk for|[Hh]allo|[Ll]iebe[rs]?|[Ss]ehr geehrte[rs]?|"
               r"[Cc]ześć|[Dd]zień dobry|[Ss]zanown[ya]|[Bb]onjour|[Cc]her|[Cc]hère|[Mm]ein Name ist|[Ii]ch heiße|"
               r"[Nn]azywam się|[Mm]am na imię|[Jj]e m'appelle|[Mm]e llamo|[Mm]i chiamo|[Mm]ijn naam is|[Ii]k ben|"
               r"[Vv]ersicherungsnehmer(?:in)?:?|[Pp]olicyholder:?|[Cc]laimant:?|[Uu]bezpieczon[ya]:?|[Ww]nioskodawca:?|"
               r"(?m:^(?:From|To|Cc|Bcc|Reply-To|Von|An|Od|Do|De|À)[ \t]?:))[ \t:,?]+)")
# A line holding nothing but a name (signature blocks, address labels): "Vinicius Cunha\nTabio Corp".
_NAME_LINE = (rf"(?m:^[^\w\n]{{0,4}}(?P<v>{_NAME}(?: \p{{Lu}}\.?)?(?: {{1,2}}(?:(?i:{_PARTICLE}) ){{0,2}}{_NAME}){{1,2}})"
              r"[ \t]*,?[ \t]*$)")
_CUED_SINGLE_NAME = rf"{_SINGLE_CUE}(?P<v>{_NAME}(?: (?:{_PARTICLE} )?{_NAME}){{0,2}})(?!\w)"
# A known first name (gazetteer) followed by one or two capitalised words: "Tsuneto Heida", "Vida Ledesma".
_GIVEN_THEN_SURNAME = (rf"(?<![\w'’])(?P<v>(?P<given>{_NAME})(?: \p{{Lu}}\.?)?(?: {{1,2}}(?:(?i:{_PARTICLE}) ){{0,2}}\p{{Lu}}"
                       rf"[\p{{L}}'’\-]*[\p{{Ll}}][\p{{L}}'’\-]*){{1,2}})(?![\w'’])")

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DATE = (rf"\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{2,4}}|\d{{1,2}}(?:st|nd|rd|th)?\s(?:of\s)?{_MONTH},?\s\d{{4}}"
         rf"|{_MONTH}\s\d{{1,2}}(?:st|nd|rd|th)?,?\s\d{{4}}")
# Only a date with a birth cue before it is a date of birth: plain dates are not personal data.
_DOB = (r"(?i:\bborn(?:\son)?|date\sof\sbirth|\bDOB|birth\s?date|birthday(?:\sis)?|geboren(?:\sam)?|"
        rf"urodzon[ya](?:\sdnia)?|date\sde\snaissance)[\s:,.]*(?i:(?:is|was|on|it's|it\sis|am|le)\s)?(?P<v>{_DATE})")

_CAP = r"\p{Lu}[\p{L}'’\-]*"
_JOIN = (r"(?:am|an|der|den|im|zum|zur|ob|bei|de|du|des|la|le|les|d'|of|the|sur|nad|vor|del|della|delle|dei|degli|di|da|do|"
         r"dalla|dallo|dello|dal|sul|sulla|"
         r"dos|das|las|los|el|van|von|ten|ter|op|aan|het|aux|au|à|l')")
_CITY = rf"{_CAP}(?:[\s\-](?:{_CAP}|{_JOIN})){{0,4}}"
_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}|\d{2}-\d{3}|\d{5}(?:-\d{4})?)"
_NUMBER = r"\d{1,5}[A-Za-z]?(?:\s?[/-]\s?\d{1,4}[A-Za-z]?)?(?:\s(?:m\.|lok\.|Whg\.|Apt\.?|Flat)\s?\d{1,4})?"
_KIND = (r"(?:rue|avenue|boulevard|chemin|place|impasse|allée|quai|route|cours|ulica|ul\.|aleja|al\.|plac|pl\.|"
         r"osiedle|os\.)")
_STREET_NAME = rf"(?:{_CAP}\.?|{_JOIN}|{_KIND})(?:[\s\-](?:{_CAP}\.?|{_JOIN}|\d{{1,2}}(?=\s{_CAP}))){{0,5}}"
# street + number + postcode + city in the orders EU and US letters use:
# "12 Mill Lane, Leeds AB1 2CD", "890 Bowers View Apt. 883, Herringfort, VI 48307",
# "Hauptstr. 5, 12345 Berlin", "ul. Kwiatowa 12/3, 00-123 Warszawa", "5, boulevard de Allain, 74503 Roy",
# "rue de Pereira, 95935 Moulin-sur-Mer" (French streets without a number).
_STREET = (rf"(?:(?:Flat|Apt\.?|Unit)\s\w+,?\s)?(?:{_NUMBER},?\s{_STREET_NAME}(?:\s(?:Apt\.|Suite|Flat)\s\w+)?"
           rf"|{_STREET_NAME}\s{_NUMBER}|(?:\d{{1,4}},?\s)?{_KIND}\s{_STREET_NAME})")
_TAIL = rf"(?:{_POSTCODE}\s{_CITY}|{_CITY},?\s{_POSTCODE}|{_CITY},\s[A-Z]{{2}}\s\d{{5}}(?:-\d{{4}})?)"
_ADDRESS = rf"(?<![\p{{L}}\d]){_STREET},?\s{_TAIL}(?![\p{{L}}\d])"

# An address block without city and postcode in the usual order ("2189 Market St, Suite 907",
# "Korte Noordsstraat 136, Apt. 984, Tubize"): a house number, then capitalised words, numbers and
# designators over at most four lines; kept when it holds a street word, a designator with its
# number, or a postcode at its end.
_STREET_WORD = (r"(?i:street|st\.?|road|rd\.?|avenue|ave\.?|lane|ln\.?|drive|dr\.?|court|ct\.?|place|pl\.?|way|square|"
                r"sq\.?|terrace|crescent|close|parade|row|walk|boulevard|blvd\.?|highway|hwy\.?|gardens|grove|mews|"
                r"\w*stra(?:ß|ss)e|\w*str\.|\w*weg|\w*gasse|\w*platz|\w*allee|\w*straat|\w*laan|\w*gracht|\w*vej|"
                r"\w*gade|\w*vägen|\w*gatan|\w*vei(?:en)?|\w*veg(?:en)?|\w*gata|\w*katu|\w*tie|ulica|ul\.|aleja|al\.|plac|osiedle|os\.|rue|"
                r"chemin|impasse|allée|quai|cours|route|via|viale|piazza|corso|calle|avenida|avda\.|av\.|ctra\.|crta\.|carrer|rua|rúa|"
                r"praça|travessa|gränd|aqq\.|str|út|utca|u\.|rkp\.|"
                r"kapu|krt\.|körút|rakpart|köz|sor|sétány|fasor|tee|"
                r"útja|tér|körút|trg|ulice|náměstí|ulitsa)")
_ORDINAL = r"\d{1,3}(?:st|nd|rd|th)(?![\w])"  # numbered streets: "845 137th Avenue"
_DESIGNATOR = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Box|P\.?O\.? Box|PSC|Wohnung|lok\.|m\.)"
# one word of an address; a dot only ends an abbreviation ("St.", "Str."), so "Berlin. Meine" stops there
_ADDR_TOKEN = (rf"(?:{_DESIGNATOR}\s\d{{1,5}}[A-Za-z]?|\d{{2}}-\d{{3}}(?!\d)|[A-Z]{{1,2}}\d[A-Z\d]?\s\d[A-Z]{{2}}|"
               rf"{_ORDINAL}|\d{{1,4}}\.(?=[ \t]*\n|[ \t]+{_DESIGNATOR}\s)|\d{{1,5}}[A-Za-z]?(?:/\d{{1,4}}[A-Za-z]?)?|\p{{Lu}}[\p{{L}}'’\-]{{0,3}}\.|\p{{Lu}}[\p{{L}}'’\-]*|{_JOIN}|"
               rf"{_STREET_WORD}|z|ze|C/|(?:\p{{Lu}}\.){{2,3}}|[dl]'\p{{Lu}}[\p{{L}}]*|\(\p{{Lu}}[\p{{L}}]*\)|\d{{1,4}}\.)")
_ADDRESS_BLOCK = (rf"(?<![\w.,/-])(?P<v>(?:{_DESIGNATOR}\s|{_KIND}\s(?:{_ADDR_TOKEN}\s){{1,4}})?\d{{1,5}}[A-Za-z]?(?:(?:,?[ \t]+|(?:,?[ \t]*\n){{1,2}},?[ \t]*|,)"
                  rf"{_ADDR_TOKEN}){{2,14}})(?![\w])")
# An address introduced as one: "the corner of Arenales 9462 and Panna Ways", "Address: Salambek and 1678 Dorp St".
_ADDRESS_CUE = (r"(?i:corner\sof|address(?:\sis)?:?|adres(?:se)?:?|anschrift:?|wohnhaft\sin|zamieszkał[ay]?\sw?|"
                r"lives?\sat|living\sat|moved\sto|located\sat|deliver(?:ed)?\sto|send\s(?:it|this|them)\sto|sent\sto|meet\sme\sat)")
_CUED_ADDRESS = (rf"{_ADDRESS_CUE}[\s:]+(?:the\s)?(?P<v>{_ADDR_TOKEN}(?:(?:,?[ \t]+|,)(?:{_ADDR_TOKEN}|and|y|und|i|et)){{1,12}})"
                 rf"(?![\w])")


# A person addressed at the very start ("Ella, can I speak to your boss?") or speaking in a
# dialogue ("Murron: \"Who are you?\""): positions where a capitalised word is a name even when it
# is also a function word elsewhere.
_ADDRESSED = rf"(?m:^[ \t]*(?P<v>{_NAME}),[ \t])"
_SPEAKER = rf"(?m:^[ \t]*(?P<v>{_NAME})[ \t]?:[ \t]?[\"“])"


_POSITION_ZIPF = 4.5  # "Hi", "Hello", "Dear" are first names somewhere too, and far more common as words


def _named_by_position(word: str) -> bool:
    from wordfreq import zipf_frequency

    w = word.casefold()
    return w not in _SALUTATIONS and (w in all_given_names() and zipf_frequency(w, "en") < _POSITION_ZIPF
                                      or _name_word(w))


def _at_name_position(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] stands where _ADDRESSED or _SPEAKER put a name."""
    line_start = text.rfind("\n", 0, start) + 1
    return not text[line_start:start].strip() and bool(regex.match(r",[ \t]|[ \t]?:[ \t]?[\"“]", text[end:end + 4]))


def _position_name_recognizer(name: str, pattern: str):
    def hit(m, entities):
        if _named_by_position(m.group("v")):
            return "PERSON", m.start("v"), m.end("v"), 0.5

    return _regex_recognizer(name, ["PERSON"], pattern, hit, warm=all_given_names)


# A number labelled after it, as in signatures: "0171 555 0199 (mobile)", "1667900760-Fax".
_PHONE_THEN_CUE = (r"(?<![\w+])(?P<v>\+?\d[\d \-().]{5,18}\d)[ \t]?[-(]?[ \t]?"
                   r"(?i:fax|office|mobile|phone|cell|tel|home|work|desk|Handy|Telefon|komórka|portable)\b")

# Digits in pairs, as small numbering plans print them ("96 63 21" in Greenland, "31 75 65 12"):
# no region in params may know the plan, and no date or amount is written so.
_PAIRED_DIGITS = r"(?<![\d+.,:/\-] ?)(?<!\w)(?P<v>\d{2}(?: \d{2}){2,4})(?! ?[.,:/\-]?\d)(?!\w)"

# A street and its house number alone: "Magrethevej 224", "Via Solfatara 21", "Rue des Lilas 4", "Grazer
# Strasse 10", "Olav Duuns gate 134", "Bem rkp. 93", "Za Školou 1348"; or a post-office box.
_GLUED_KIND = (r"vej|gade|gata|gatan|vägen|weg|straße|strasse|str\.|gasse|platz|allee|straat|laan|gracht|katu|tie|veien|"
               r"vei|veg|utca|chaussee|damm|ufer|steig|pfad|hof|braut|vegur")
_FIRST_KIND = (r"Via|Viale|Rue|Calle|Avenida|Rua|Piazza|Corso|Carrer|Travessa|Trg|Ulica|Plac|Aleja|ul\.|al\.|pl\.|os\.|Ul\.|Al\.|Pl\.|Os\.|Avda\.|"
               r"Av\.|C/|Ctra\.|Crta\.|Rúa|Praça|Largo|Chemin|Allée|Quai|Impasse|Boulevard|Cours|"
               r"V|Za|Na|Nad|Pod|Im|Am|An|Auf|Zum|Zur|De|Het|Op")  # prepositions that open Czech, German, Dutch names
_LAST_KIND = (r"[Gg]ate|[Gg]ata|gaten|[Pp]lass|[Aa]llé|[Vv]ej|[Gg]ade|[Aa]qq\.|rakpart|rkp\.|utca|u\.|út|útja|körút|krt\.|tér|köz|"
              r"kapu|sor|Strasse|Straße|Str\.|Weg|Gasse|Platz|Allee|Ring|Damm|Ufer|Laan|Straat|Plads|Gatan|Vägen|Väg|Gränd|"
              r"Vei|Veien")
_STREET_AND_NUMBER = (rf"(?<![\w'’])(?P<v>(?:\p{{Lu}}\p{{Ll}}+(?:{_GLUED_KIND})|"
                      rf"(?:{_FIRST_KIND})(?:\s(?:{_JOIN}|\p{{Lu}}[\p{{L}}'’\-]*)){{1,5}}|"
                      rf"\p{{Lu}}[\p{{L}}'’\-]+(?:\s\p{{Lu}}[\p{{L}}'’\-]+){{0,2}}\s(?:{_LAST_KIND}))"
                      r"\s\d{1,4}[a-zA-Z]?(?:/\d{1,4})?|P\.[ \t]?O\.[ \t]?Box\s\d{1,6})(?![\w'’])")

# US military post: "USNS Vogel\nFPO AA 51439", "PSC 0889, Box 9579\nAPO AE 30595"
_MILITARY = (rf"(?<!\w)(?P<v>(?:(?:USNS|USS|USNV|USCGC)\s[\ufeff\u200b]?(?:(?i:{_PARTICLE}|te)\s)*\p{{Lu}}[\p{{L}}'’\-]+|"
             r"(?:PSC|Unit)\s\d{4},?\sBox\s\d{4}),?\s+"
             r"(?:APO|FPO|DPO)\sA[AEP]\s\d{5})(?!\w)")
_POSTCODE_END = r"(?:\b\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}|\d{2}-\d{3})"
_BLOCK_END = regex.compile(rf"{_POSTCODE_END}$")
_POSTCODE_LINE_END = regex.compile(rf"{_POSTCODE_END}(?=[ \t]*\n)")


# A full date whose year lies 16+ years back is most likely someone's birth date in support data.
_OLD_DATE = rf"(?<![\w/.-])(?P<v>{_DATE})(?![\w/-])"


def _regex_recognizer(name: str, entities: list[str], pattern: str, hit, warm=None, overlapped: bool = False):
    """A presidio recognizer from a regex and a judge: hit(match, entities) gives (type, start, end,
    score) or None. warm() runs at load, before worker processes fork (word lists, gazetteers).
    overlapped: also try matches starting inside a rejected one ("Call Zofia Wrona": not "Call...",
    but "Zofia Wrona")."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class LoragateRecognizer(EntityRecognizer):
        def load(self) -> None:
            self.pattern = regex.compile(pattern, FLAGS)
            if warm:
                warm()

        def analyze(self, text, entities, nlp_artifacts=None):
            found = (hit(m, entities) for m in self.pattern.finditer(text, overlapped=overlapped))
            return [RecognizerResult(*f) for f in found if f]

    return LoragateRecognizer(supported_entities=entities, name=name, version=VERSION)


# A street and house number (either order) before a comma and a place, as address fields are
# joined: "Grote Baan 484, Herent", "Trg revolucije 4, Cerkno", "93 Zeas Pasalimani, Laneia",
# "P.O. Box 41, Kingston" (no NER tag needed).
_SNP_WORD = r"(?:\p{Lu}[\p{L}'’\-]*\.?|\p{Ll}[\p{L}'’\-]*\.?)"  # "Bem rkp.", "Avenue d'Ouchy", "N. Stadion"
_STREET_NUMBER_PLACE = (rf"(?<![\w'’.,])(?P<v>(?:(?P<street>(?:{_DESIGNATOR}|(?:\p{{Lu}}\.){{2,3}}|\p{{Lu}}[\p{{L}}'’\-/]*\.?)"
                        rf"(?:[ \t]+{_SNP_WORD}){{0,5}})[ \t]+\d{{1,5}}[A-Za-z]?\.?|\d{{1,5}}[A-Za-z]?[ \t]+"
                        rf"(?P<street2>(?:{_KIND}[ \t]+)?(?:\p{{Lu}}[\p{{L}}'’\-]*\.?|{_ORDINAL})(?:[ \t]+{_SNP_WORD}){{0,3}})),[ \t]*"
                        rf"(?P<place>\p{{Lu}}[\p{{L}}'’\-]+(?:(?:[ \t\-/]|[ \t]-[ \t])(?:{_JOIN}[ \t])?\p{{Lu}}[\p{{L}}'’\-]+){{0,2}}))"
                        rf"(?![\w'’])")
_STREET_NUMBER_PLACE_ZIPF = 4.0  # a word this common in English ("Windows 10, Office", "Room 12, Building") is no street


def _street_number_place_recognizer():
    from wordfreq import zipf_frequency

    # street kinds and particles ("via", "Al.", "De", "Im", "Saint") are not judged as English words
    kind = regex.compile(rf"{_JOIN}|{_STREET_WORD}|(?i:cours|vicolo|na|pod|saint|sainte|san|santa)")
    tail_kind = regex.compile(r"(?i:gate|gaten)")  # Norwegian "Berings gate", never the first word ("Gate 12")

    def street_like(street: str, zipf: float = _STREET_NUMBER_PLACE_ZIPF) -> bool:
        # the place may be a word ("Bath", "Hart"); the street's words must not be common English words
        words = regex.findall(rf"{_ORDINAL}|\p{{L}}+\.?", street)
        judged = [w.rstrip(".") for i, w in enumerate(words)
                  if not kind.fullmatch(w.casefold()) and not (i and tail_kind.fullmatch(w))]
        return all(regex.fullmatch(_ORDINAL, w) or len(w) < 2 or zipf_frequency(w.casefold(), "en") < zipf
                   for w in judged)

    def hit(m, entities):
        street = m.group("street2")
        if street is not None:  # "110 Kontomari, Strovolos": one word after a number must be rarer ("2 Apples, Pears")
            start = m.start("v") if street_like(street, _STREET_NUMBER_PLACE_ZIPF if " " in street else 2.5) else None
        elif regex.match(_DESIGNATOR, m.group("street")):
            start = m.start("v")
        else:  # the pattern starts at a sentence's first word: "We moved from Markt 85, Mühlbach"
            starts = [m.start("street") + w.start() for w in regex.finditer(r"(?<![\w'’\-])\p{Lu}", m.group("street"))]
            start = next((a for a in starts if street_like(m.string[a:m.end("street")])), None)
        if start is not None:
            return "STREET_ADDRESS", start, m.end("v"), 0.5

    return _regex_recognizer("StreetNumberPlaceRecognizer", ["STREET_ADDRESS"], _STREET_NUMBER_PLACE, hit)


# title-case words right before a number that is no recent year, for _street_before_number to judge
# ("GraphQL-core 3", "PyCon 2022" are no streets)
_TITLE_WORD = r"\p{Lu}\p{Ll}+(?:-\p{Lu}\p{Ll}+)*"
_RUN_BEFORE_NUMBER = (rf"(?<![\w'’\-])(?P<v>{_TITLE_WORD}(?:[ \t](?:{_JOIN}[ \t])?{_TITLE_WORD}){{0,2}})"
                      r"(?=[ \t](?!(?:19[5-9]|20[0-3])\d\b)\d)")


def _street_before_number_recognizer():
    """A street no model tags, shaped like one, before its house number: "grew up on [Parmova 109]
    and", "| Tylova 42 |" (the rule _house_number_end applies to names and places found)."""
    def hit(m, entities):
        end = _street_shaped(m.group("v")) and _house_number_at(m.string, m.end("v"), lambda: True)
        if end:
            return "STREET_ADDRESS", m.start("v"), end, 0.5

    return _regex_recognizer("StreetBeforeNumberRecognizer", ["STREET_ADDRESS"], _RUN_BEFORE_NUMBER, hit)


def _cued_address_recognizer():
    """Words after an address cue, kept when they hold a number or a street word; ends at the
    last capitalised word or number (never on "and")."""
    street = regex.compile(rf"(?<!\w){_STREET_WORD}(?!\w)")

    def hit(m, entities):
        value = regex.sub(r"(?:[\s,]+(?:and|y|und|i|et))+$", "", m.group("v"))
        if regex.search(r"\d", value) or street.search(value) or _US_SUFFIX.search(value):
            return "STREET_ADDRESS", m.start("v"), m.start("v") + len(value), 0.55

    return _regex_recognizer("CuedAddressRecognizer", ["STREET_ADDRESS"], _CUED_ADDRESS, hit)


def _old_date_recognizer():
    from datetime import date

    latest = date.today().year - 16

    def hit(m, entities):
        year = regex.search(r"(\d{4})(?!.*\d{4})", m.group("v"))
        if year and 1900 <= int(year.group(1)) <= latest:
            return "DATE_OF_BIRTH", m.start("v"), m.end("v"), 0.45

    return _regex_recognizer("OldDateRecognizer", ["DATE_OF_BIRTH"], _OLD_DATE, hit)


# IBAN-shaped: country code, check digits, 11-30 more characters in groups; a mistyped IBAN fails
# its checksum and is still an account number
_IBAN_SHAPE = r"(?<![\w])(?P<v>[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)(?![\w])"


# the street suffixes of US addresses (USPS Publication 28) beyond _STREET_WORD's, capitalised
# only: "82 Glenoaks Rise", "417 Lombardi Center"; lower case they are words ("3 points")
_US_SUFFIX = regex.compile(
    r"(?<!\w)(?:Alley|Bend|Bluffs?|Branch|Bridge|Club|Courts|Crest|Crossroad|Curve|Dam|Drives|Fall|Garden|Groves|Parks|"
    r"Passage|Roads|Run|Squares|Wall|Ways|Brooks?|Burgs?|Bypass|Camp|Canyon|Cape|Causeway|Centers?|Centre|Circles?|Cliffs?|"
    r"Commons?|Corners?|Course|Coves?|Creek|Crossing|Dale|Divide|Estates?|Expressway|Extensions?|Falls|Ferry|Fields?|"
    r"Flats?|Fords?|Forest|Forges?|Forks?|Fort|Freeway|Gateway|Glens?|Greens?|Harbors?|Haven|Heights|Hills?|"
    r"Hollow|Inlet|Islands?|Isle|Junctions?|Keys?|Knolls?|Lakes?|Landing|Lights?|Loaf|Locks?|Lodge|Loop|Mall|Manors?|"
    r"Meadows?|Mills?|Mission|Motorway|Mounts?|Mountains?|Neck|Orchard|Oval|Overpass|Parkways?|Pass|Path|Pike|Pines?|"
    r"Plains?|Plaza|Points?|Ports?|Prairie|Radial|Ramp|Ranch|Rapids?|Rest|Ridges?|Rise|River|Route|Shoals?|Shores?|"
    r"Skyway|Springs?|Spurs?|Stations?|Stravenue|Streams?|Streets|Summit|Throughway|Trace|Track|Trafficway|Trail|"
    r"Trailer|Tunnel|Turnpike|Underpass|Unions?|Valleys?|Viaduct|Views?|Villages?|Ville|Vista|Walks|Wells?)(?!\w)")


_NUMBERED_STREET = regex.compile(r"\d{1,5}[A-Za-z]?[ \t]+(?P<name>(?:\p{L}[\p{L}'’\-]*\.?[ \t]+){1,3})\d{1,4}[A-Za-z]?(?![\w])")


def _rare_street_word(word: str) -> bool:
    """A word of a street's name that is no English word nor a first name ("Graben", "Guipúzcoa";
    not "Windows" in "2 Windows 10 laptops")."""
    from wordfreq import zipf_frequency

    w = word.strip(".").casefold()
    return len(w) < 2 or regex.fullmatch(_JOIN, w) is not None or (
        zipf_frequency(w, "en") < _NAME_WORD_ZIPF and not is_given(word.strip(".")))


def _address_block_recognizer():
    street, designator = regex.compile(rf"(?<!\w){_STREET_WORD}(?!\w)"), regex.compile(rf"(?<!\w){_DESIGNATOR}\s\d")

    def hit(m, entities):
        words = regex.split(r"[\s,]+", m.group("v"))
        while words and words[-1].casefold().strip(".") in _stopwords():  # "... Road The" -> "... Road"
            words.pop()
        value = m.group("v")[: m.group("v").rfind(words[-1]) + len(words[-1])] if words else ""
        if value and (street.search(value) or _US_SUFFIX.search(value) or designator.search(value) or _BLOCK_END.search(value)):
            return "STREET_ADDRESS", m.start("v"), m.start("v") + len(value), 0.6
        # the lines of a postal address run on into the next block's ("... Portugal 26559\n09122 12 60 01 office")
        line_end = list(_POSTCODE_LINE_END.finditer(value))
        if line_end:
            return "STREET_ADDRESS", m.start("v"), m.start("v") + line_end[-1].end(), 0.6
        numbered = _NUMBERED_STREET.match(value)  # "8572 Gewerbepark 45": house numbers round a rare name
        if numbered and all(_rare_street_word(w) for w in numbered.group("name").split()):
            return "STREET_ADDRESS", m.start("v"), m.start("v") + numbered.end(), 0.5

    return _regex_recognizer("AddressBlockRecognizer", ["STREET_ADDRESS"], _ADDRESS_BLOCK, hit)


# Phone candidates: international and national formats with separators, optional extension.
# libphonenumber then decides; its own matcher (presidio's PhoneRecognizer) tries every region on
# every text and took most of the analysis time with 21 regions.
_PHONE = (r"(?<![\w+])(?:(?:\+|00)[ \t]?\d{1,3}[ \t.\-/]?)?(?:\(0\)[ \t]?)?(?:\(\d[\d ]{0,5}\)[ \t]?(?:\d{1,4}[ \t])?|\d{1,5}[ \t.\-/]?)"
          r"\d{2,4}(?:[ \t.\-/]?\d{2,4}){0,5}(?P<ext>[ \t]?(?:x|ext\.?)[ \t]?\d{1,5})?(?!\w)")
_NANP = regex.compile(r"^[2-9]\d\d[2-9]\d{6}$")  # area code and exchange never start with 0 or 1
_NOT_PHONE = regex.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$|^\d{1,3}(?:\.\d{1,3}){3}$|^\d{4}-\d{2}-\d{2}$")


def _parse(number: str, region: str | None):
    import phonenumbers

    try:
        return phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None


def _phone_score(core: str, regions: tuple[str, ...] = PHONE_REGIONS) -> float:
    """0.75 for a number valid in one of our regions, 0.5 for a possible one written with
    separators, 0 otherwise: bare digit runs are order numbers more often than phones."""
    import phonenumbers

    digits = sum(c.isdigit() for c in core)
    international = core.startswith(("+", "00"))
    grouped = international or bool(regex.search(r"[\s.\-()/]", core))
    if not 7 <= digits <= 15 or _NOT_PHONE.match(core):
        return 0.0
    if not grouped and digits == 10 and _NANP.match(core):
        return 0.5
    if not grouped and not core.startswith("0"):  # bare runs: only valid national numbers (0...)
        return 0.0
    number = "+" + core[2:] if core.startswith("00") else core
    parsed = [n for r in ((None,) if international else regions) if (n := _parse(number, r))]
    if any(phonenumbers.is_valid_number(n) for n in parsed):
        return 0.75
    # "+71 (0)82 857 22 27": a plus and 8+ grouped digits is a phone's shape even where no country
    # code fits (a typo, or a region libphonenumber does not know)
    plausible = international and digits >= 8 or any(phonenumbers.is_possible_number(n) for n in parsed)
    return 0.5 if grouped and plausible else 0.0


def _phone_recognizer(regions: tuple[str, ...] = PHONE_REGIONS):
    def hit(m, entities):
        core = m.group(0)[: m.start("ext") - m.start()] if m.group("ext") else m.group(0)
        score = _phone_score(core.strip(), regions)
        return ("PHONE_NUMBER", m.start(), m.end(), score) if score else None

    return _regex_recognizer("PhoneNumberRecognizer", ["PHONE_NUMBER"], _PHONE, hit)


# 12-19 digits, grouped by spaces or dashes as printed on cards and receipts; Luhn-checked below.
_CARD = r"(?<![\w+\-])(?:\d[ \-]?){11,18}\d(?![\w\-])"
_CARD_PREFIX = regex.compile(r"^(?:[2-6]|0604|1800|2131)")  # Mastercard 2-series, Visa, Amex, Discover, JCB, Maestro


# printed as cards are: 4-4-4-4(-n), Amex's 4-6-5, Diners' 4-6-4, or one run of 12-19 digits (an
# unformatted card of any issuer's length: Maestro 12, Visa 13/19, Diners 14, Amex 15)
_CARD_GROUPS = regex.compile(r"^\d{4}(?:[ \-]\d{4}){3}(?:[ \-]\d{1,3})?$|^\d{4}[ \-]\d{6}[ \-]\d{4,5}$|^\d{12,19}$")


def _card_recognizer():
    """presidio's card regex predates Mastercard's 2-series, 13/19-digit Visa and Maestro; this one
    takes any issuer prefix with a valid Luhn check digit, and a number printed as cards are
    (_CARD_GROUPS) whose check digit fails: a mistyped card is still one."""
    def hit(m, entities):
        digits = "".join(c for c in m.group(0) if c.isdigit())
        if not _CARD_PREFIX.match(digits):
            return None
        if luhn.is_valid(digits):
            return "CREDIT_CARD", m.start(), m.end(), 1.0
        return ("CREDIT_CARD", m.start(), m.end(), 0.45) if _CARD_GROUPS.match(m.group(0)) else None

    return _regex_recognizer("PaymentCardRecognizer", ["CREDIT_CARD"], _CARD, hit)


@dataclass(frozen=True)
class CustomPattern:
    entity: str
    regex: str
    score: float = 0.8


def _group_recognizer(entity: str, pattern: str, score: float, name: str):
    """A recognizer whose span is the regex's `v` group: the cue words around it stay readable."""
    return _regex_recognizer(name, [entity], pattern, lambda m, entities: (entity, m.start("v"), m.end("v"), score))


def _nip_recognizer():
    """Polish NIP (tax number): 10 digits in 3-3-2-2 or 3-2-2-3 groups, checksum by python-stdnum."""
    from presidio_analyzer import Pattern, PatternRecognizer

    class PlNipRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return nip.is_valid(pattern_text.removeprefix("PL"))

    patterns = [Pattern("nip", r"(?<!\d)(?:PL\s?)?(?:\d{3}-?\d{3}-?\d{2}-?\d{2}|\d{3}-\d{2}-\d{2}-\d{3})(?![\d-])", 0.4)]
    return PlNipRecognizer(supported_entity="PL_NIP", patterns=patterns, context=["nip", "vat", "tax"],
                           name="PlNipRecognizer", version=VERSION)


def _de_tax_id_recognizer():
    """presidio's Steuer-IdNr checksum, also for the spaced form people write ("12 345 678 901")."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import DeTaxIdRecognizer

    class SpacedDeTaxIdRecognizer(DeTaxIdRecognizer):
        def validate_result(self, pattern_text: str):
            return super().validate_result(pattern_text.replace(" ", ""))

    pattern = Pattern("steuer_idnr", r"(?<!\d)[1-9]\d(?:\s?\d{3}){3}(?![\d])", 0.4)
    return SpacedDeTaxIdRecognizer(patterns=[pattern], supported_language="en", name="DeTaxIdRecognizer")


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    """Function words of the languages we serve (spaCy ships the lists without any model): a name
    gazetteer holds "The", "Will" and "Hi" too, and these must never count as names."""
    return frozenset().union(*_stopwords_by_language().values())


@functools.lru_cache(maxsize=1)
def _stopwords_by_language() -> dict[str, frozenset[str]]:
    import importlib

    return {lang: frozenset(w.casefold() for w in importlib.import_module(f"spacy.lang.{lang}.stop_words").STOP_WORDS)
            for lang in ("en", "de", "fr", "pl", "es", "it", "nl", "pt")}


@functools.lru_cache(maxsize=512)
def text_languages(text: str) -> tuple[str, ...]:
    """The languages a text is written in: those whose function words cover at least 0.6 of what
    the best one's cover (a word shared by n lists counting 1/n); all we serve for a text too short to tell."""
    lists = _stopwords_by_language()
    # whole lower-case words: "Call" holds no "all"; a capitalised "I" or "A" would count as Polish or Spanish
    words = [w for w in regex.findall(r"(?<!\p{L})\p{Ll}+(?!\p{L})", text) if w in _stopwords()]
    shared = {w: sum(w in stop for stop in lists.values()) for w in set(words)}
    counts = {lang: sum(1 / shared[w] for w in words if w in stop) for lang, stop in lists.items()}
    best = max(counts.values(), default=0)
    if best < 2:  # too few function words to tell: English (the NER's language) when they point there first
        return ("en",) if best > 0 and counts["en"] == best else tuple(lists)
    return tuple(lang for lang, n in counts.items() if n >= 0.6 * best)


@functools.lru_cache(maxsize=512)
def text_stopwords(text: str) -> frozenset[str]:
    """The function words of the languages a text is written in."""
    return frozenset().union(*(_stopwords_by_language()[lang] for lang in text_languages(text)))


@functools.lru_cache(maxsize=1)
def given_names() -> frozenset[str]:
    """First names of 55 countries from gender-guesser's dictionary (casefolded), function words out."""
    return all_given_names() - _stopwords()


@functools.lru_cache(maxsize=1)
def all_given_names() -> frozenset[str]:
    """The same list with the names that are also function words ("Ella", "Sara", "Mia"): read as
    names only where the position says a person is meant (addressed at the start, speaking)."""
    import gender_guesser.detector

    return frozenset(gender_guesser.detector.Detector(case_sensitive=False).names)


def is_given(word: str) -> bool:
    """A known first name, also possessive ("Daniel's"), written with accents the list lacks
    ("Édouard") or hyphenated ("Karl-Friedrich") when every part is one."""
    w = regex.sub(r"['’]s$", "", word.strip("'’.")).casefold()
    plain = "".join(c for c in unicodedata.normalize("NFKD", w) if not unicodedata.combining(c))
    return bool({w, plain} & given_names()) or "-" in w and all(p in given_names() for p in w.split("-"))


def _checked_name_recognizer(entity: str, pattern: str, score: float, name: str, given: bool, cued: bool = False,
                             name_like: bool = False):
    """A name pattern whose words must not be function words; with `given`, the first must be a known
    first name. Keeps "Hi Team"-like cues and "The Dimensions" out of the PERSON findings. With
    `cued`, the cue has said a name follows: a first name that is also a word ("named him Christian",
    "Hi Miles", "my kid Ante") is taken as the name. With `name_like`, one word at least must be a
    first name, a known surname or a rare word ("Personal Info" on a line of its own is no name)."""
    def hit(m, entities):
        words = [w.strip("'’.").casefold() for w in m.group("v").split()]
        named = [w for w in words if len(w) > 1 and not _IS_PARTICLE.match(w)]  # initials and "van der" pass
        if cued:
            named = [w for w in named if w not in all_given_names() or w in _SALUTATIONS]
        # a known first name before a surname is a name even when alone it is a place ("Carolina Lombardi")
        common = [w for w in named[1 if given and len(named) > 1 else 0:] if w in _NOT_NAMES]
        if name_like and not any(w in all_given_names() or is_known(w) or _rare_everywhere(w, _NAME_WORD_ZIPF) for w in words):
            return None
        if words and not common and not any(w in _stopwords() for w in named) and (not given or is_given(words[0])):
            return entity, m.start("v"), m.end("v"), score

    return _regex_recognizer(name, [entity], pattern, hit, warm=all_given_names if cued else given_names, overlapped=True)


# capitalised words that follow name cues but are not names
_NOT_NAMES = frozenset("""team all everyone there customer customers sir madam support service monday tuesday wednesday
thursday friday saturday sunday january february march april june july august september october november december
street road avenue lane bank card account please thanks thank regards hope faith grace joy love rose summer art bill
guy max sun sky star angel king queen prince price silver gold river crystal amber ruby pearl jade ivy iris chase miles
lane rich frank jack kit mark ray rob pat dean drew don gene carol so la le de du en et il in on as al el london paris
victoria sydney india china florence austin jordan georgia virginia carolina dakota orlando lincoln washington chelsea
berlin vienna warsaw madrid rome milan brussels dublin zurich geneva europe america asia africa christian
inc ltd plc corp corporation group holdings trust company co gmbh ag sa spa bv nv llc limited partners services solutions
technologies systems international global department office manager director address phone email fax mobile desk
dept subject re fwd dear damen herren ladies gentlemen państwo panie panowie mesdames messieurs world folks guys""".split())
_SALUTATIONS = frozenset("""sir madam dear damen herren ladies gentlemen państwo panie panowie mesdames messieurs team
customer customers everyone all sehr geehrte geehrter geehrten liebe lieber szanowni szanowny szanowna cher chère chers
madame monsieur estimado estimada estimados gentile gentili geachte beste""".split())
# A lone capitalised word that is a known first name: "Martin has...", "They had 6: Julian, Ellen".
_PLACE_WORD = (r"(?:East|West|North|South|Lake|Port|Mount|Saint|Sainte|St\.|San|Santa|New|Fort|Bad|Our|our|Upper|Lower|"
               r"Great|Little|Old)")
_PLACE_BEFORE = rf"(?<!\b{_PLACE_WORD}\s)"  # "East Timothy", "Lake Kayla": Faker and real-world places
_IS_PLACE_WORD = regex.compile(rf"^{_PLACE_WORD}$")
_NOT_AFTER_PLACE_WORD = regex.compile(_PLACE_BEFORE)
_GIVEN_ALONE = rf"(?<![\w'’\-]){_PLACE_BEFORE}(?P<v>{_NAME})(?![\w'’\-])"


# A known name as the subject of what people do: "Carvajal began writing", "Sara is a very...". Any
# known name before a verb of people; a first name also before "is", "was", "has" ("Python is": no).
# ... of which these only people do ("Amber spent", not "Rich works")
_PEOPLE_ONLY_VERB = (r"(?:said|says|asked|asks|told|tells|wrote|writes|replied|spent|thinks|thought|believes|agreed|"
                     r"explained|mentioned|emailed|phoned|promised|complained|decided)")
_PERSON_VERB = (rf"(?:{_PEOPLE_ONLY_VERB}|began|begins|spends|wants|wanted|likes|liked|loves|loved|lives|lived|works|"
                r"worked|joined|met|visited|studied|signed|arrived|left)")
# A first name called out at the end of a sentence: "Don't go to town, Elke!", "Thanks, Anna?"
_VOCATIVE = rf"(?<=,[ \t])(?P<v>{_NAME})(?=[ \t]?[!?])"
_NAME_THEN_VERB = (rf"(?<![\w'’\-]){_PLACE_BEFORE}(?P<v>{_NAME})(?= (?:{_PERSON_VERB}|(?P<aux>is|was|has|had|will|would|"
                   r"can|could|did|does))\b)")
_ONLY_PEOPLE = regex.compile(rf" {_PEOPLE_ONLY_VERB}\b")
_SUBJECT_ZIPF = 5.5  # a name this common as a word ("Will", "Even") is more often the word


def _vocative_recognizer():
    def hit(m, entities):
        w = m.group("v").casefold()
        if (w in all_given_names() or is_known(w)) and w not in _NOT_NAMES and w not in _SALUTATIONS:
            return "PERSON", m.start("v"), m.end("v"), 0.45

    return _regex_recognizer("VocativeNameRecognizer", ["PERSON"], _VOCATIVE, hit, warm=known_names)


# A first name capitalised mid-sentence that is a function word only in languages the text is not
# written in: "leave me Sara" ("sara" is Spanish and Italian), "asked Ben" ("ben": Italian).
# after a lower-case word that is no particle of a place: "early [Lange]", not "Ostrów [Mazowiecka]", "am [Harz]"
_AFTER_LOWER = rf"(?:(?<![\w'’\-])(?!(?!the|of){_JOIN}[ \t])\p{{Ll}}[\p{{L}}'’\-]*|,)[ \t]+"
_GIVEN_MID_SENTENCE = rf"(?<={_AFTER_LOWER})(?P<v>{_NAME})(?![\w'’\-])"
_FOREIGN_WORD_EN_ZIPF = 5.0


def _foreign_word_name_recognizer():
    from wordfreq import zipf_frequency

    def hit(m, entities):
        w = m.group("v").casefold()
        if (w in all_given_names() and w not in given_names() and w not in _NOT_NAMES and w not in _SALUTATIONS
                and w not in text_stopwords(m.string) and zipf_frequency(w, "en") < _FOREIGN_WORD_EN_ZIPF):
            return "PERSON", m.start("v"), m.end("v"), 0.45

    return _regex_recognizer("ForeignWordNameRecognizer", ["PERSON"], _GIVEN_MID_SENTENCE, hit, warm=given_names)


def _subject_name_recognizer():
    from spacy.lang.en.stop_words import STOP_WORDS

    def hit(m, entities):
        w = m.group("v").strip("'’").casefold()
        known = is_given(w) or is_known(w) or _rare_here(w, m.string, _RARE_SUBJECT_ZIPF)
        # before "is" or "had" a surname only when it is rare as a word: "Bartek had given" but "Java has"
        named = (w in all_given_names() or known and (_rare_everywhere(w, _KNOWN_ZIPF) or _rare_here(w, m.string))
                 if m.group("aux") else known)
        # a first name that is also a word or a place is one before what only people do ("Amber spent",
        # not "Rich works")
        listed = w in _NOT_NAMES and not (w in all_given_names() and _ONLY_PEOPLE.match(m.string, m.end("v")))
        common = not (_rare_everywhere(w, _SUBJECT_ZIPF) or _rare_here(w, m.string, _SUBJECT_ZIPF))
        if named and w not in STOP_WORDS and not listed and not common:
            return "PERSON", m.start("v"), m.end("v"), 0.45

    return _regex_recognizer("SubjectNameRecognizer", ["PERSON"], _NAME_THEN_VERB, hit, warm=known_names)


_RARE_ZIPF = 2.0  # below this in every language's word list (wordfreq): no common word, no famous name
_KNOWN_ZIPF = 3.5  # a known first name or surname (gazetteer) below this everywhere: "Medrano", "Bergamaschi"
# German (and French) compounds are rare words but common nouns: "Versicherungsnummer", "Schadensmeldung"
_NOUN_ENDING = regex.compile(r"(?:ung|ungen|heit|keit|schaft|nummer|ierung|tion|ment|ität|schein|vertrag|meldung|"
                             r"versicherung|antrag|bescheid|fall|zahlung|konto|adresse|datum)$")


def _rare_everywhere(word: str, zipf: float) -> bool:
    """No language we serve uses the (casefolded) word as often as zipf, and it has no noun ending."""
    from wordfreq import zipf_frequency

    return not _NOUN_ENDING.search(word) and all(zipf_frequency(word, lang) < zipf for lang in LEXICON_LANGS)


def _known_and_uncommon(word: str, zipf: float, en_zipf: float = 9.0) -> bool:
    """A known first name or surname (names-dataset) that no language we serve uses as often as
    zipf, nor English as often as en_zipf; function words and the words _NOT_NAMES lists left out."""
    from wordfreq import zipf_frequency

    w = word.casefold()
    return (w not in _stopwords() and w not in _NOT_NAMES and is_known(w) and zipf_frequency(w, "en") < en_zipf
            and _rare_everywhere(w, zipf))


# rarer than this in the text's own languages: a word capitalised mid-sentence, and one before a
# verb of people ("Simonds began": 2.45 in English); 2.5 mid-sentence masks "Tensors", "Markdown"
_RARE_HERE_ZIPF, _RARE_SUBJECT_ZIPF = 2.0, 2.5


def _rare_here(word: str, text: str, zipf: float = _RARE_HERE_ZIPF) -> bool:
    """Rare in the languages the text is written in, or a known name uncommon in them; never a
    function word of the text nor a word _NOT_NAMES lists."""
    from wordfreq import zipf_frequency

    langs = text_languages(text)
    if len(langs) > 2 or word in text_stopwords(text) or word in _NOT_NAMES or _NOUN_ENDING.search(word):
        return False  # a text too short to tell its language: the all-language tests decide
    top = max(zipf_frequency(word, lang) for lang in langs)
    return top < zipf or top < _KNOWN_ZIPF and is_known(word)


_OPENING_WORD = regex.compile(r"(?:^|[.!?\n][ \t\"“(']*)(?P<w>\p{Lu}\p{Ll}*)[ \t]+$")


def _after_opening_function_word(text: str, at: int) -> bool:
    """Whether text[at:] follows a sentence's first word when that is a function word of the text
    ("So Bartek just left", "Does Marik still work there?"): as good as mid-sentence."""
    m = _OPENING_WORD.search(text, max(0, at - 16), at)
    return bool(m) and m.group("w").casefold() in text_stopwords(text)


def _rare_word_recognizer():
    """A capitalised word that no language we serve uses commonly (wordfreq's frequency lists,
    which also count names and places) is a proper noun: a rare surname, first name or small place.
    spaCy's small model misses exactly these ("Otremba", "Nishioka"); masking a rare place too is
    the safe side of the trade."""
    from wordfreq import zipf_frequency

    def hit(m, entities):
        word = m.group(0).strip("'’").casefold()
        tail = m.group("tail")
        if tail and zipf_frequency(tail, "en") >= _NAME_WORD_ZIPF:  # "Cython-based", "Graphql-core": no names
            return None
        # capitalised mid-sentence, a word need only be rare in the text's own languages: "early Lange"
        # in English text ("lange" is common German), "the Witteman novel" ("witteman": Dutch)
        if (_AFTER_LOWER_WORD.search(m.string, max(0, m.start() - 40), m.start()) or _after_opening_function_word(
                m.string, m.start())) and _rare_here(word, m.string):
            return "PERSON", m.start(), m.end(), 0.45
        # a word of 15+ letters is an English derivation ("Redistributions") unless an Icelandic patronym
        short = max(len(p) for p in word.split("-")) <= 14 or word.endswith(("dóttir", "dottir", "sson"))
        if 2 < len(word) and short and (_rare_everywhere(word, _RARE_ZIPF) or _known_and_uncommon(word, _KNOWN_ZIPF)):
            return "PERSON", m.start(), m.end(), 0.45

    def warm():
        known_names()
        for lang in LEXICON_LANGS:
            zipf_frequency("the", lang)

    # Finnish and Estonian double names go on in lower case after the hyphen: "Hauta-aho"
    pattern = rf"(?<![\w'’\-/.@<_]){_NAME}(?:-(?P<tail>\p{{Ll}}{{2,}}))?(?![\w'’\-/@>_])"
    return _regex_recognizer("RareWordRecognizer", ["PERSON"], pattern, hit, warm)


# An identifier introduced by its name is personal data whether or not its checksum holds (a
# mistyped PESEL still names a person): the cue decides the type, validation only raises the score.
_ID_CUES = {
    "PL_PESEL": r"PESEL",
    "PL_NIP": r"NIP|numer\sNIP|VAT(?:\s?(?:ID|EU|PL))?",
    "DE_TAX_ID": r"Steuer-?ID|Steuer-?IdNr\.?|Steuer-?Identifikationsnummer|Steuernummer|St\.?-?Nr\.?|IdNr\.?|"
                 r"tax\s(?:ID|identification)|TIN",
    "IBAN_CODE": r"IBAN|(?:bank\s)?account(?:\snumber|\sno\.?)|Kontonummer|(?:numer|nr\.?)\skonta|RIB",
    "CREDIT_CARD": r"(?:credit|debit|payment|bank)\scard|card(?:\s(?:number|no\.?|num|#))?|cc|Kartennummer|"
                   r"Kreditkarte(?:nnummer)?|(?:numer|nr\.?)\skarty|karty|carte(?:\sbancaire)?|Visa|Mastercard|Amex",
    "PHONE_NUMBER": r"phone|tel\.?|telephone|mobile|cell|fax|desk|landline|direct\sline|call\s(?:me\s)?(?:on|at)|reach\sme\s(?:on|at)|"
                    r"text\sme\s(?:on|at)|(?:answering|messages|texts|SMS|calls|ringing)\s(?:at|to|on|from)|Telefon(?:nummer)?|Handy(?:nummer)?|Mobil(?:nummer)?|Rufnummer|"
                    r"(?:numer|nr\.?)\s(?:tel\.?|telefonu|komórki)|komórka|komórkowy|téléphone|portable|mobile",
    "US_SSN": r"SSN|social\ssecurity(?:\snumber|\sno\.?|\s#)?|Sozialversicherungsnummer",
    "ID_NUMBER": r"(?:policy|claim|customer|member|contract|insurance|account)\s(?:number|no\.?|ID|ref(?:erence)?|#)|"
                 r"polic(?:y|ies)|polisa|Versicherungs(?:schein)?nummer|Polic?ennummer|Schadennummer|Kundennummer|"
                 r"Vertragsnummer|(?:numer|nr\.?)\s(?:polisy|szkody|klienta|umowy)|num[ée]ro\sde\s(?:contrat|sinistre|client)|"
                 r"passport(?:\snumber|\sno\.?)?|Reisepass(?:nummer)?|Personalausweis(?:nummer)?|Ausweisnummer|"
                 r"paszport(?:u)?|dowodu?\sosobist\w*|(?:numer|nr\.?)\sdowodu|passeport|carte\sd'identité|"
                 r"national\sinsurance(?:\snumber|\sno\.?)?|NINO|NI\snumber|driver'?s\slicen[cs]e(?:\snumber|\sno\.?)?|"
                 r"(?:licen[cs]e|ID|identity\scard)\s(?:number|no\.?)|REGON|NIR|num[ée]ro\sde\ss[ée]curit[ée]\ssociale",
}
# between the cue and the value: "is", "number", "nr", a colon...
_CUE_GAP = r"(?:[\s:#=\-–.]|(?i:\b(?:is|was|ist|lautet|jest|to|est|number|no\.|nr\.?|numer|num[ée]ro|Nummer|of|my)\b))*"
# the value: digit groups (letters allowed, as in IBANs, passports and NINOs), 5+ digits in all; or
# one token of letters in both cases and 2+ digits, as some licences are written ("ifSCHrFF3113")
_MIXED_TOKEN = r"(?=[A-Za-z]*\d[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{6,20}(?![\w])(?![\s./\-]\w*\d)"
_CUE_VALUE = (rf"(?P<v>{_MIXED_TOKEN}|"
              r"\+?\(?(?:[a-z]{1,2}(?=\d))?[A-Z0-9][A-Z0-9]*(?:(?:[\s./\-]|\)\s?)[A-Z0-9]+)*\)?)(?![\p{Ll}\d])")
_CHECKS = {"PL_PESEL": pesel.is_valid, "PL_NIP": nip.is_valid, "DE_TAX_ID": idnr.is_valid, "IBAN_CODE": iban.is_valid,
           "CREDIT_CARD": luhn.is_valid, "US_SSN": ssn.is_valid}


def _cued_value(text: str) -> str:
    """The value cut back to its digit groups: stop at a group without digits (a following word)."""
    groups = regex.split(r"(?<=[\s])", text)
    kept = []
    for group in groups:
        if not any(c.isdigit() for c in group) and kept and len(group.strip()) > 1:
            break
        kept.append(group)
    value = "".join(kept).rstrip(" ./-")
    return value[:-1] if value.endswith(")") and value.count("(") < value.count(")") else value


def _cued_id_recognizer():
    cue = "|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _ID_CUES.items())

    def hit(m, entities):
        kind = next(k for k in _ID_CUES if m.group(k) is not None)
        value = _cued_value(m.group("v"))
        mixed = regex.fullmatch(_MIXED_TOKEN, value) is not None
        if (sum(c.isdigit() for c in value) >= 5 or mixed) and kind in (entities or [kind]):
            valid = _CHECKS.get(kind, lambda v: False)(regex.sub(r"[\s./\-()]", "", value))
            return kind, m.start("v"), m.start("v") + len(value), 1.0 if valid else 0.8

    return _regex_recognizer("CuedIdRecognizer", list(_ID_CUES),
                             rf"(?i:(?<![\w])(?:{cue})(?<=\.|\b)(?!\w)){_CUE_GAP}{_CUE_VALUE}", hit)


def checksum_recognizers() -> list:
    """National identifiers verified by checksum: few false alarms, so the residual scan uses them too."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import PlPeselRecognizer

    pesel = Pattern("pesel", r"(?<!\d)\d{2}(?:[02468][1-9]|[13579][012])(?:0[1-9]|[12]\d|3[01])\d{5}(?!\d)", 0.4)
    return [PlPeselRecognizer(patterns=[pesel], supported_language="en"), _nip_recognizer(), _de_tax_id_recognizer()]


def loragate_recognizers(custom: tuple[CustomPattern, ...] = (), phone_regions: tuple[str, ...] = PHONE_REGIONS) -> list:
    """Everything loragate registers beside presidio's English defaults."""
    from presidio_analyzer import Pattern, PatternRecognizer

    found = [
        _phone_recognizer(phone_regions),
        _card_recognizer(),
        PatternRecognizer(supported_entity="STREET_ADDRESS", patterns=[Pattern("street_postcode_city", _ADDRESS, 0.9)],
                          name="StreetAddressRecognizer", version=VERSION, global_regex_flags=FLAGS),
        _address_block_recognizer(),
        _group_recognizer("STREET_ADDRESS", _MILITARY, 0.8, "MilitaryAddressRecognizer"),
        _group_recognizer("STREET_ADDRESS", _STREET_AND_NUMBER, 0.5, "StreetNumberRecognizer"),
        _cued_address_recognizer(),
        _street_before_number_recognizer(),
        _street_number_place_recognizer(),
        _group_recognizer("PERSON", _CUED_NAME, 0.7, "CuedNameRecognizer"),
        _group_recognizer("PERSON", _NAME_THEN_CUE, 0.6, "NameBeforeCueRecognizer"),
        _group_recognizer("PERSON", _TITLED_NAME, 0.7, "TitledNameRecognizer"),
        _checked_name_recognizer("PERSON", _CUED_SINGLE_NAME, 0.6, "CuedGivenNameRecognizer", given=False, cued=True),
        _checked_name_recognizer("PERSON", _GIVEN_THEN_SURNAME, 0.5, "GivenNameSurnameRecognizer", given=True),
        _checked_name_recognizer("PERSON", _GIVEN_ALONE, 0.45, "GivenNameRecognizer", given=True),
        _checked_name_recognizer("PERSON", _NAME_LINE, 0.45, "NameLineRecognizer", given=False, cued=True,
                                 name_like=True),
        _rare_word_recognizer(),
        _subject_name_recognizer(),
        _foreign_word_name_recognizer(),
        _vocative_recognizer(),
        _position_name_recognizer("AddressedNameRecognizer", _ADDRESSED),
        _position_name_recognizer("SpeakerNameRecognizer", _SPEAKER),
        _group_recognizer("DATE_OF_BIRTH", _DOB, 0.85, "DateOfBirthRecognizer"),
        _old_date_recognizer(),
        _group_recognizer("IBAN_CODE", _IBAN_SHAPE, 0.5, "IbanShapeRecognizer"),
        _cued_id_recognizer(),
        _group_recognizer("PHONE_NUMBER", _PHONE_THEN_CUE, 0.5, "PhoneBeforeCueRecognizer"),
        _group_recognizer("PHONE_NUMBER", _PAIRED_DIGITS, 0.45, "PairedDigitsPhoneRecognizer"),
        *checksum_recognizers(),
    ]
    found += [PatternRecognizer(supported_entity=c.entity, patterns=[Pattern(f"custom_{i}", c.regex, c.score)],
                                name=f"CustomPattern{i}_{c.entity}", version="params")
              for i, c in enumerate(custom)]
    return found


_TITLES_AND_SUFFIXES = regex.compile(rf"^{_TITLE}\s|,?\s{_SUFFIX}$")
# "Our Zielona Góra office", "our West Amandafort office": a place
_DETERMINER = regex.compile(r"\b(?:[Oo]ur|[Yy]our|[Tt]heir|[Ii]ts)\s(?:(?:East|West|North|South|New|Old)\s)?$")
# "My Steuer-ID", "New IBAN"; in capitals only, since "Megan Swift" and "Iban Lopez" are names
_ID_WORD = regex.compile(r"\b(?:IBAN|BIC|SWIFT|PESEL|NIP|REGON|SSN|VAT|TIN|NINO|PIN)\b|-I[Dd]\b")


def _name_end(text: str, start: int, end: int) -> int:
    """A PERSON span cut back to its first line (spaCy's spans run over line breaks: "Vinicius
    Cunha\\nTabio Corp\\n0057", and dropping it would lose the name inside, since presidio keeps only
    the longer finding); empty (dropped) when what is left holds a digit."""
    line_break = text.find("\n", start, end)
    end = line_break if line_break > start else end
    while end > start and text[end - 1] in " \t,;":
        end -= 1
    return start if any(c.isdigit() for c in text[start:end]) else end  # "Model RT-AX60U": a label


_CUE_BEFORE = regex.compile(rf"{_SINGLE_CUE}$", FLAGS)
_VERB_AFTER = regex.compile(rf" (?:{_PERSON_VERB}|is|was|has|had|will|would|can|could|did|does)\b")


def _said_to_be_a_name(text: str, start: int, end: int) -> bool:
    """A cue before ("said Sara", "my kid Ante"), a verb of people after ("Sara is") or a call at a
    sentence's end (", Elke!"): a name even where the word is a function word of some language too."""
    called_out = regex.search(r",[ \t]$", text[max(0, start - 2):start]) and regex.match(r"[ \t]?[!?]", text[end:end + 2])
    return bool(_CUE_BEFORE.search(text[max(0, start - 60):start]) or _VERB_AFTER.match(text, end) or called_out
                ) and text[start:end].casefold() in all_given_names()


def _named_here(text: str, start: int, end: int) -> bool:
    """Whether where a word stands says it is a name, though it is a function word somewhere too."""
    return (_at_name_position(text, start, end) and _named_by_position(text[start:end])
            or _said_to_be_a_name(text, start, end))


_CLAUSE_WORD = regex.compile(rf"(?<![\w'’\-])(?!(?:{_PARTICLE}|{_TITLE})(?![\w.]))\p{{Ll}}+(?![\w'’\-.])")


def _clauses_cut(text: str, results: list) -> list:
    """A PERSON finding that runs over a lower-case word ("Alphonsine Coupart of Aegion Corporation
    is") kept as its name-like runs: presidio has already dropped the shorter findings inside it,
    so judging the clause whole would lose the name with it. Without such a run it stays whole."""
    from presidio_analyzer import RecognizerResult

    out = []
    for r in results:
        runs = r.entity_type == "PERSON" and _CLAUSE_WORD.search(text, r.start, r.end) and name_runs(text, r.start, r.end)
        out += [RecognizerResult("PERSON", a, b, r.score) for a, b in runs] if runs else [r]
    return out


def _function_word(word: str, span: str, text: str) -> bool:
    """A function word in the text's languages; one of another language's only where it is no
    capitalised first name ("Sara" in English text is a name, "CI" is not)."""
    return word in text_stopwords(text) or word in _stopwords() and not (
        regex.fullmatch(r"\p{Lu}\p{Ll}+", span) and word in all_given_names())


def widen_names(text: str, results: list) -> list:
    """PERSON spans grown over a title before and a suffix after ("Dr. " + name + " Jr."), since
    spaCy tags the bare name and a surviving "Dr. <PERSON> Jr." still narrows who it was. PERSON
    spans are cut back to one line and before any digits; right before a colon ("Contact person:")
    or after "our" they are labels and places, not people."""
    kept = []
    for r in _clauses_cut(text, results):
        if r.entity_type == "PERSON":
            if r.end > r.start and text[r.end - 1].isalnum():
                r.end += len(regex.match(r"\w*", text[r.end:]).group(0))  # spaCy sometimes cuts "PhD" to "Ph"
            r.end = _name_end(text, r.start, r.end)
            label = r.end > r.start and regex.match(r"\.?\s*:(?![ \t]?[\"“])", text[r.end:]) and (
                not is_given(text[r.start:r.end].split()[0]))
            words = [w.strip(".,") for w in text[r.start:r.end].casefold().split()]
            common = (all(w in _SALUTATIONS or _function_word(w, text[r.start:r.end], text) for w in words)  # "Madam", "Damen und Herren"
                      and (len(words) == 1 and not _named_here(text, r.start, r.end) or any(w in _SALUTATIONS for w in words))
                      or any(_NOUN_ENDING.search(w) and len(w) > 8 and "-" not in w for w in words))  # "Meine Versicherungsnummer"
            common = common or bool(_ID_WORD.search(text[r.start:r.end + 3]))
            # NER reading a foreign sentence ("proszę o kontakt"): no capital in a text that has them
            common = common or not regex.search(r"\p{Lu}", text[r.start:r.end]) and bool(regex.search(r"\p{Lu}", text))
            if r.end <= r.start or label or common or _DETERMINER.search(text[max(0, r.start - 20):r.start]):
                continue
            r.start, r.end = _grow_name(text, r.start, r.end)
        kept.append(r)
    return kept


# what may stand right before a detected name and belongs to it: a title, an initial, the first
# part of a hyphenated name, another name word ("Mai G Fujimura" where NER took only "Fujimura")
_GROW_LEFT = regex.compile(rf"(?:(?<!\w){_TITLE}\s|(?<![\w.])\p{{Lu}}\.?\s|(?<![\w'’])\p{{Lu}}[\p{{L}}'’]*\.?-|"
                           rf"(?<![\w'’\-])(?P<word>{_NAME})\s|(?<![\w'’\-])(?i:{_PARTICLE})\s)$")
_GROW_RIGHT = regex.compile(rf"^(?:,?\s{_SUFFIX}(?!\w)|-\p{{Lu}}\p{{Ll}}[\p{{L}}'’]*|[ \t]{{1,2}}\p{{Lu}}\.?(?=[ \t]{{1,2}}(?:\p{{Lu}}|{_PARTICLE}\s\S))|"
                            rf"(?:\s{_PARTICLE}){{1,2}}\s\p{{Lu}}[\p{{L}}'’]+(?![\w'’\-])|\s(?P<word>{_NAME})(?![\w'’\-]))")
_NAME_WORD_ZIPF = 3.0  # a capitalised neighbour rarer than this in every language is taken as part of the name
# ... and a known first name or surname below these (everywhere, in English): "Teodata [Boni]",
# "Astryd [Mercado]" ("mercado" is common in Spanish only), not "[Ask] Sanna"
_KNOWN_WORD_ZIPF, _KNOWN_WORD_EN_ZIPF = 5.5, 4.5


def _name_word(word: str) -> bool:
    """A known first name, or a capitalised word too rare to be anything but a name."""
    w = word.strip("'’").casefold()
    return is_given(w) or w not in _stopwords() and w not in _NOT_NAMES and (
        _rare_everywhere(w, _NAME_WORD_ZIPF) or _known_and_uncommon(w, _KNOWN_WORD_ZIPF, _KNOWN_WORD_EN_ZIPF))


_MID_SENTENCE = regex.compile(r"(?:\p{Ll}|,)[ \t]+$")
_AFTER_LOWER_WORD = regex.compile(rf"{_AFTER_LOWER}$")
_SENTENCE_END = regex.compile(r"[.!?\n][ \t\"“(']*$")


def _opens_sentence(text: str, at: int) -> bool:
    """Whether text[at:] starts a sentence: at the start of the text or after a stop or line break."""
    window = text[max(0, at - 6):at]
    return bool(_SENTENCE_END.search(window)) or at == len(window) and not window.strip(" \t\"“('")


def _given_before_name(text: str, word: str, at: int, start: int, initial: bool) -> bool:
    """A first name at text[at:] right before a name (at start) is part of it even where it is a
    word too: before an initial ("Mai G Fujimura"), capitalised mid-sentence ("tennis player Else
    [Lundblad]") or opening a sentence ("Even [Olsen] was"), but not a greeting ("Hi [Anna]")."""
    w = word.casefold()
    if w not in all_given_names():
        return False
    if initial or _MID_SENTENCE.search(text[max(0, at - 3):at]):
        return True
    return (_opens_sentence(text, at) and w not in text_stopwords(text)
            and not _CUE_BEFORE.search(text[max(0, at - 60):start]))


_ARTICLE_BEFORE = regex.compile(r"\b(?i:the|a|an|our|your|their)[ \t]+$")


def _grow_name(text: str, start: int, end: int) -> tuple[int, int]:
    """A PERSON span grown word by word over titles, initials, degrees and name words on either
    side (at most three steps a side): NER tags the part it knows and a surviving "Mai G" or
    "Lavinia-" still says who it was."""
    initial = False  # the step before took an initial
    for _ in range(3):
        left = _GROW_LEFT.search(text[max(0, start - 24):start])
        if not left:
            break
        word, at = left.group("word"), start - len(left.group(0))
        if word and not (_name_word(word) or _given_before_name(text, word, at, start, initial)):
            break
        start = at
        initial = regex.fullmatch(r"\p{Lu}\.?\s", left.group(0)) is not None
    for _ in range(3):
        right = _GROW_RIGHT.match(text[end:end + 24])
        # a surname rare in the text's own languages: "Voleta [Mailly]" in English ("mailly" is French);
        # not after an article: "the Ostrów Mazowiecka office" is a place
        if not right or (right.group("word") and not _name_word(right.group("word")) and not (
                _rare_here(right.group("word").strip("'’").casefold(), text, _NAME_WORD_ZIPF)
                and not _ARTICLE_BEFORE.search(text, max(0, start - 8), start))):
            break
        end += len(right.group(0))
    return start, end


# one word of an address grown from a detected one: number, capitalised word, code, particle
# ("∆", the increment sign, stands for a Greek capital delta in data typed on some keyboards)
_ADDR_PIECE = (rf"(?:{_DESIGNATOR}\s\d{{1,5}}|{_ORDINAL}|\d{{1,6}}[A-Za-z]?\.?|[\p{{Lu}}∆][\p{{L}}∆'’\-]*\.?|{_JOIN}|"
               rf"\(\p{{Lu}}[\p{{L}}]*\)|\p{{Ll}}{{1,4}}\.|\p{{Ll}}[\p{{L}}\-]{{2,15}})")
# "Síp utca 71. Ella Gardens", "Bem rkp. 97.": a dot after a number or a short lower-case abbreviation
_ADDR_RIGHT = regex.compile(rf"(?:(?<=\d|(?<![\w'’])\p{{Ll}}{{1,4}})\.)?(?:[ \t]+[-–][ \t]+|,?[ \t]+|,)(?P<word>{_ADDR_PIECE})(?![\w'’])")
_ADDR_LEFT = regex.compile(rf"(?<![\w'’])(?P<word>{_ADDR_PIECE})[ \t]+$")
# the next line goes on with the address when it starts like a place line: "Hvalsø, SJ", "Hungary 92633",
# or a country line: "Czech Republic 15775", "Cyprus (Greek)"; a line holding only a comma (an empty
# state) between them goes with it
_ADDR_NEWLINE = regex.compile(rf"\.?[ \t]*\n[ \t]*(?:,[ \t]*\n)?[ \t,]*(?P<word>{_ADDR_PIECE})(?![\w'’])"
                              rf"(?=(?:[ \t]+(?:\p{{Lu}}\p{{L}}+|\(\p{{Lu}}\p{{L}}+\))){{0,2}}[ \t]*(?:,|\n|$|\d|[?!.;:)]))")
# "Trg [revolucije] 95", "563 Professor [gate] 192", or nothing but a space: "20 rue" + "de l'Epeule"
_ADDR_GAP = regex.compile(r"^[ \t,]*(?:[\p{L}\d'’\-\"“”]+\.?(?:[ \t,]+|$)){0,2}$")  # also '"NILA"', "WE[-07-]A"
# an address's line ends in words no pattern knows, and the next line goes on with it: "Vasileos
# Pavlou [str]\n Suite 587", "Rue Sidi Bou [said]\n Apt. 468"
_ADDR_LINE_GAP = regex.compile(r"^(?:[ \t,]*[\p{L}\d'’\-]+\.?){0,2}[ \t,]*\n[ \t,]*$")
_COMPASS = regex.compile(r"North|South|East|West|New|United|Upper|Lower")
_ADDR_ZIPF = 5.0  # a capitalised word this common ("Please", "Thanks") ends an address instead of continuing it


def _address_word(word: str, text: str) -> bool:
    """Whether a word beside an address belongs to it; a function word of another language than
    the text's does ("Rua Vinte e Cinco" in an English sentence)."""
    from wordfreq import zipf_frequency

    w, stop = word.strip(".,()").casefold(), text_stopwords(text)
    # state and region codes ("CA", "SJ"), house numbers, particles ("delle", "de"), kinds ("route", "rue")
    if regex.fullmatch(r"\p{Lu}{1,3}\.?", word) or regex.match(r"\d", w) or regex.fullmatch(rf"{_JOIN}|{_KIND}", w):
        return True
    if _COMPASS.fullmatch(word) or _US_SUFFIX.fullmatch(word):  # "South Africa 42245", "Johansen Ways"
        return True
    if word[:1].islower():  # "Tas vezér u.", "fejedelem útja": abbreviations and rare words only
        return word.endswith(".") and len(w) <= 4 or w not in stop and zipf_frequency(w, "en") < _NAME_WORD_ZIPF
    return w not in stop and zipf_frequency(w, "en") < _ADDR_ZIPF


def _whole_words(text: str, start: int, end: int) -> tuple[int, int]:
    def inside(i: int) -> bool:
        return 0 < i < len(text) and all(c.isalpha() or c == "∆" for c in text[i - 1:i + 1])

    while inside(end):
        end += 1
    while inside(start):
        start -= 1
    return start, end


_NAME_BEFORE_CONJUNCTION = regex.compile(r"(?<![\w'’])(?P<name>\p{Lu}\p{Ll}+)[ \t]+(?:e|y)[ \t]+$")
_DUTCH_ARTICLE = regex.compile(r"(?:^|(?<=[\s,:(]))['’]?(?:s-|t[ \t])$")


def _grow_address(text: str, start: int, end: int) -> tuple[int, int]:
    """A STREET_ADDRESS span grown over the address words beside it (numbers, capitalised words,
    state codes, particles; four left, eight right), on into the next line when it starts like a
    place line (", SJ", "Austria 16727"): the patterns stop at the first word they do not know, and what is
    left ("Via delle Coste", "Casselman") still locates a person. A span that ends or starts inside a
    word ("ΟΡΜΙ" of "ΟΡΜΙ∆ΕΙΑ", cut at a sign that is no letter) takes the whole word first."""
    start, end = _whole_words(text, start, end)
    for _ in range(4):
        article = _DUTCH_ARTICLE.search(text, max(0, start - 4), start)
        if article:  # "'s-Gravendamseweg", "'t Goylaan" (the apostrophe is often lost)
            start = article.start()
            continue
        inside = _NAME_BEFORE_CONJUNCTION.search(text, max(0, start - 40), start)
        if inside and _inside_street_name(text, inside.end("name"), start):  # "549 [Treinta y] Tres 5747"
            start = inside.start("name")
            continue
        left = _ADDR_LEFT.search(text[max(0, start - 40):start])
        if not left or not _address_word(left.group("word"), text):
            break
        before = start - len(left.group(0))
        if regex.fullmatch(_JOIN, left.group("word")) and not _ADDR_LEFT.search(text[max(0, before - 40):before]):
            break  # a particle only between address words: "sent to the <address>" keeps its "the"
        start = before
    start = _street_line_before(text, start)
    for _ in range(8):
        step = _ADDR_RIGHT.match(text, end, end + 40) or _ADDR_NEWLINE.match(text, end, end + 40)
        if not step or not _address_word(step.group("word"), text):
            break
        end = step.end("word")
    while end > start and text[end - 1] in " \t,":
        end -= 1
    return start, end


_LINE_BEFORE = regex.compile(r"(?:^|(?<=\n))[ \t]*(?:[\d\p{L}][.)][ \t]+)?(?P<line>[^\n]{3,150}?)[ \t]*\n[ \t]*$")  # "1) "
_DESIGNATOR_FIRST = regex.compile(rf"{_DESIGNATOR}\s\d")
_NUMBER_FIRST = regex.compile(r"(?<!\S)\d{1,5}[A-Za-z]?[ \t]")


def _street_line_before(text: str, start: int) -> int:
    """An address that starts a line with a flat or suite ("Apt. 236") starts on the line before
    when that holds a number and address words only ("699 92 route de Lyon"), or from a house
    number on ("It's in [54815 97 cours Franklin Roosevelt]\n Apt. 056")."""
    if not _DESIGNATOR_FIRST.match(text, start):  # before the line search, which is the costly part
        return start
    m = _LINE_BEFORE.search(text, max(0, start - 160), start)
    if not m or not regex.search(r"\d", m.group("line")):
        return start
    line = m.group("line")
    for at in [0] + [n.start() for n in _NUMBER_FIRST.finditer(line)]:
        if _street_words(line[at:].split(), text):
            return m.start("line") + at
    return start


def _street_words(words: list[str], text: str) -> bool:
    """Every word could be a street's, lower-case ones after a street kind too ("93 rue des [six
    frères] Ruellan")."""
    kinds = [i for i, w in enumerate(words) if regex.fullmatch(_KIND, w.casefold())]
    return bool(words) and all(_street_gap_word(w, text) or (kinds and kinds[0] < i and w.islower())
                               for i, w in enumerate(words))


_AND = r"(?:and|or|und|oder|i|oraz|et|ou|y|e)"
_CONJUNCTION = regex.compile(rf"\b{_AND}\b")  # two addresses, not one


_NAMED_NUMBER_GAP = regex.compile(r"^[ \t]+(?:e|y)[ \t]+(?:\p{Lu}\p{Ll}+[ \t]+)?$")  # "Vinte [e Cinco] de Setembro"


def _inside_street_name(text: str, end: int, start: int) -> bool:
    """A Portuguese or Spanish "e"/"y" between two parts of one street's name ("Rua Vinte e Cinco de
    Setembro", "Treinta y Tres 5747"), not between two addresses: the left part ends in a
    capitalised word that is no street kind, the right one starts with a letter."""
    before = regex.search(r"(\p{Lu}\p{Ll}+)$", text[max(0, end - 30):end])
    return bool(_NAMED_NUMBER_GAP.match(text[end:start]) and before and not regex.fullmatch(_STREET_WORD, before.group(1))
                and text[start:start + 1].isalpha())


def _runs(text: str, results: list) -> list[list]:
    """Findings chained by gaps of one or two words on one line ("Trg [revolucije] 95"), and two
    addresses' findings by the last words of a line before the next line's."""
    runs: list[list] = []
    end = -1  # where the current run ends
    for r in sorted(results, key=lambda r: (r.start, -r.end)):
        gap = text[end:r.start]
        after_address = bool(runs) and any(o.entity_type == "STREET_ADDRESS" for o in runs[-1])
        lines = r.entity_type == "STREET_ADDRESS" and after_address
        if runs and (r.start <= end or (_ADDR_GAP.match(gap) or lines and _ADDR_LINE_GAP.match(gap))
                     and (not _CONJUNCTION.search(gap) or after_address and _inside_street_name(text, end, r.start))):
            runs[-1].append(r)
            end = max(end, r.end)
        else:
            runs.append([r])
            end = r.end
    return runs


# the street part before a place: "Tas vezér u. 66., Budapest", "Main St 87, Tallinn, Estonia"
_STREET_BEFORE_PLACE = regex.compile(rf"(?<![\w'’])(?:{_ADDR_PIECE}[ \t]+){{0,5}}\d{{1,5}}[A-Za-z]?\.?,[ \t]*"
                                     rf"(?:{_CITY},[ \t]*){{0,2}}$")


def _streets_before_places(text: str, results: list) -> list:
    """A place (NER's LOCATION) right after a street part with a house number and a comma is the
    end of an address: the pair becomes one STREET_ADDRESS finding."""
    from presidio_analyzer import RecognizerResult

    added = []
    for r in (r for r in results if r.entity_type == "LOCATION"):
        street = _STREET_BEFORE_PLACE.search(text[max(0, r.start - 80):r.start])
        if street and regex.search(r"\p{L}", street.group(0)) and all(_address_word(w, text) for w in street.group(0).split()[:-1]):
            added.append(RecognizerResult("STREET_ADDRESS", r.start - len(street.group(0)), r.end, 0.5))
    return results + added


# a house number closing a street name, or a postcode a place: "... Koidu 31?", "Frauentaler Strasse 85 for
# this card", "Hungary 47153"
_NUMBER_AFTER = rf"(?P<gap>(?:[ \t](?:{_STREET_WORD}|{_JOIN}|\p{{L}}[\p{{L}}\-]{{1,15}}\.?)(?![\w'’])){{0,2}})[ \t]\d{{1,5}}[A-Za-z]?(?:[/-]\d{{1,4}})?"
_HOUSE_NUMBER = regex.compile(rf"{_NUMBER_AFTER}\.?(?=[ \t]*(?:[,;?!)\n|\"”'’]|\.(?:\s|$)|$|[ \t](?:and|or|for|in|on|"
                              r"please|und|i|et|y)\b))")


# mid-sentence, a number after a name is a count as often ("Anna 24 years", "Python 3 tutorial"): only
# a word shaped like no name or a street's name is a street before it ("mentioned Finnestadgeilen 24 twice")
_COUNTED = (r"(?:times?|years?|yrs|months?|weeks?|days?|hours?|hrs|minutes?|mins?|seconds?|secs?|points?|pts|goals?|"
            r"games?|matches|people|persons?|kids|children|items?|pages?|percent|per|kg|km|miles?|euros?|dollars?|pounds?|"
            r"units?|nodes?|cores?|steps?|stars?|votes?|lines?|words?|x)\b")
_NUMBER_MID_SENTENCE = regex.compile(rf"{_NUMBER_AFTER}(?=[ \t]+(?!{_COUNTED})\p{{Ll}})")


def _found_before(text: str, results: list, end_of_street) -> list:
    """results plus a STREET_ADDRESS from each name or place found to where end_of_street(text,
    finding) says the street it begins goes on to (None: it begins none)."""
    from presidio_analyzer import RecognizerResult

    ends = ((r, end_of_street(text, r)) for r in results if r.entity_type in ("PERSON", "LOCATION"))
    return results + [RecognizerResult("STREET_ADDRESS", r.start, end, 0.5) for r, end in ends if end]


def _house_number_end(text: str, r) -> int | None:
    """A name or place found right before a lone house number that ends a clause or a line is a
    street: NER tags "Koidu" in "... to Koidu 31?" as a person and the number would survive; so
    is a street-shaped one before a number mid-sentence."""
    return _house_number_at(text, r.end, lambda: _street_shaped(text[r.start:r.end]))


def _house_number_at(text: str, end: int, shaped) -> int | None:
    """Where the house number after a street's name ending at `end` ends: a lone number closing a
    clause or a line, or one mid-sentence when shaped() says the name looks like a street's."""
    m = _HOUSE_NUMBER.match(text, end) or shaped() and _NUMBER_MID_SENTENCE.match(text, end)
    return m.end() if m and all(_street_gap_word(w, text) for w in m.group("gap").split()) else None


# street suffixes of the US postal list that no street pattern above takes, after a name: "Beauchemin
# [Landing]", "Alexandrov [Points]" (the name was found, the suffix would survive)
_SUFFIX_AFTER = regex.compile(r"[ \t](?:Landing|Points?|Land|Canyon|Crossing|Vista|Villages?|Manors?|Oval|Viaduct|Turnpike|"
                              r"Underpass|Overpass|Knolls?|Ridges?|Springs?|Trail|Trace|Harbor|Heights|Junction|Meadows?|"
                              r"Mills?|Orchard|Pike|Pines?|Plains?|Plaza|Prairie|Ranch|Rapids|Shoals?|Shores?|Skyway|Spur|"
                              r"Stravenue|Summit|Throughway|Tunnel|Views?|Ville|Walks?|Wells?|Branch|Brooks?|Burg|Bypass|"
                              r"Causeway|Cliffs?|Corners?|Cove|Creek|Crest|Curve|Dale|Divide|Estates?|Expressway|Falls|"
                              r"Ferry|Fields?|Flats?|Ford|Forge|Forks?|Freeway|Gateway|Glens?|Haven|Hollow|Inlet|Isle|Loop|"
                              r"Lodge|Locks?|Motorway|Parkway|Radial|Ramp|Rest|Run|Squares?|Stream|Valleys?)(?![\w'’\-])")


def _suffix_end(text: str, r) -> int | None:
    """A name found right before a street suffix is a street ("the corner of X and Beauchemin
    Landing"), when it is one word and no known first name ("Tiegan Hill" stays a person)."""
    m = _SUFFIX_AFTER.match(text, r.end)
    value = text[r.start:r.end]
    return m.end() if m and len(value.split()) == 1 and not is_given(value) else None


def _street_shaped(value: str) -> bool:
    """Words no known first name, the last ending like a street's name ("Ørbækvej", "Grüne
    Auerstrasse") or rare in every language we serve ("Finnestadgeilen", "Λεωφόρος Πανεπιστημίου")."""
    words = [w.strip("'’.").casefold() for w in value.split()]
    return (bool(words) and not any(is_given(w) for w in words)
            and bool(regex.fullmatch(_STREET_WORD, words[-1]) or _rare_everywhere(words[-1], _RARE_ZIPF)))


def _street_gap_word(word: str, text: str) -> bool:
    """A word between a street's name and its number: a street kind in any language, or an address
    word ("Bydalen [allé] 50", "Leif Jensons [plass] 75", "Trg [revolucije] 95", "Santa Teresa [degli Scalzi] 71")."""
    return bool(regex.fullmatch(_STREET_WORD, word)) or _address_word(word, text)


# a second street after an address and a conjunction: "<address> and 93 Zeas Pasalimani for post mail",
# "<address> and Via Santa Teresa degli Scalzi 71"
_STREET_WORDS = rf"(?:{_ADDR_PIECE})(?:[ \t]+(?:{_ADDR_PIECE})){{0,4}}"
_AND_STREET = regex.compile(rf"[ \t]*,?[ \t]+{_AND}[ \t]+(?P<v>\d{{1,5}}[A-Za-z]?[ \t]+{_STREET_WORDS}"
                            rf"|{_STREET_WORDS}[ \t]+\d{{1,5}}[A-Za-z]?\.?|(?:\p{{Lu}}[\p{{L}}'’\-]+[ \t]){{1,2}}{_US_SUFFIX.pattern})(?![\w'’])")


def _streets_after_addresses(text: str, results: list) -> list:
    """A street with its number right after an address and "and" is an address too, when its words
    are address words: the pair reads as two addresses, and the second has no place to be found by."""
    from presidio_analyzer import RecognizerResult

    added = []
    for r in (r for r in results if r.entity_type == "STREET_ADDRESS"):
        m = _AND_STREET.match(text, r.end)
        words = list(regex.finditer(r"\S+", m.group("v"))) if m else []
        while len(words) > 2 and not _address_word(words[-1].group(), text):  # "93 Zeas Pasalimani [for post]"
            words.pop()
        if len(words) >= 2 and all(_address_word(w.group(), text) for w in words):
            added.append(RecognizerResult("STREET_ADDRESS", m.start("v"), m.start("v") + words[-1].end(), 0.5))
    return results + added


_NUMBER_BEFORE = regex.compile(r"(?:^|(?<=[\s,:]))\d{1,5}[A-Za-z]?[ \t]+$")
_SPEAKS_OF_ADDRESS = regex.compile(rf"{_ADDRESS_CUE}|\b(?i:address(?:es)?|Adresse|adres|street)\b")


def _numbers_before_streets(text: str, results: list) -> list:
    """In a text that speaks of an address, a house number right before a name or place found is
    the start of a street: "my address to Simone and [93] Zeas Pasalimani" (NER tags the street as a
    person, the number would survive)."""
    from presidio_analyzer import RecognizerResult

    if not _SPEAKS_OF_ADDRESS.search(text):
        return results
    numbered = ((r, _NUMBER_BEFORE.search(text, max(0, r.start - 12), r.start)) for r in results
                if r.entity_type in ("PERSON", "LOCATION"))
    return results + [RecognizerResult("STREET_ADDRESS", m.start(), r.end, 0.5) for r, m in numbered if m]


def widen_addresses(text: str, results: list) -> list:
    """A STREET_ADDRESS span grown over the words a chain of findings around it leaves between
    them (names and places inside an address included) and then over its neighbouring address
    words."""
    results = _found_before(text, _found_before(text, _streets_before_places(text, results), _suffix_end), _house_number_end)
    results = _streets_after_addresses(text, _numbers_before_streets(text, results))
    for run in _runs(text, results):
        for r in (r for r in run if r.entity_type == "STREET_ADDRESS"):
            r.start, r.end = _grow_address(text, min(o.start for o in run), max(o.end for o in run))
    return results


_NAME_RUN = regex.compile(rf"(?<![\w'’\-]){_NAME}(?:[ \t](?:{_PARTICLE}[ \t])?(?:\p{{Lu}}\.?[ \t])?{_NAME})*(?![\w'’\-])")


def name_runs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The runs of capitalised words inside text[start:end] that hold a first name, a known surname
    or a rare word, cut back past common words at either end: what a name finding keeps when the
    model that made it tags whole clauses ("Eustaquia Acevedo of Energy Solutions Forum is the CEO")."""
    from wordfreq import zipf_frequency

    def evidence(word: str) -> bool:
        w = word.strip("'’.").casefold()
        return w not in _NOT_NAMES and w not in _SALUTATIONS and _name_word(w)

    def common(word: str) -> bool:  # "Ask", "Hi": a word before a name, not part of it
        return not evidence(word) and zipf_frequency(word.casefold(), "en") >= _KNOWN_WORD_EN_ZIPF

    runs = []
    for m in _NAME_RUN.finditer(text, start, end):
        words = list(regex.finditer(r"\S+", m.group(0)))
        while words and common(words[0].group(0)):
            words.pop(0)
        while words and common(words[-1].group(0)):
            words.pop()
        if any(evidence(w.group(0)) for w in words):
            runs.append((m.start() + words[0].start(), m.start() + words[-1].end()))
    return runs


def bare_name(value: str) -> str:
    """"Dr. Anna Nowak" and "Anna Nowak" are one person: numbering and pseudonyms key on this."""
    return _TITLES_AND_SUFFIXES.sub("", value)


def _standalone(words: list[str]) -> list[str]:
    """Of a name's capitalised words, those no function word, particle or word _NOT_NAMES lists."""
    stop = _stopwords()
    return [w for w in words if w.casefold() not in stop and w.casefold() not in _NOT_NAMES and not _IS_PARTICLE.match(w)]


def name_parts(value: str) -> list[str]:
    """The words of a detected full name that stand for the person alone: capitalised, 3+ letters,
    no title, particle or function word ("Dr. Anna van Dijk" -> Anna, Dijk)."""
    words = regex.findall(r"\p{Lu}[\p{L}'’\-]{2,}", bare_name(value))
    return _standalone(words) if len(words) > 1 else []


def name_words(value: str) -> set[str]:
    """The words of a detected name (one word or more) that could name the person on their own
    elsewhere: name_parts' words and first names kept as words, possessive "'s" off, no salutation
    nor a place's first word."""
    words = [regex.sub(r"['’]s$", "", w) for w in regex.findall(r"\p{Lu}[\p{L}'’\-]{2,}", bare_name(value))]
    # a first name kept as a word elsewhere ("Milan", "Amber") is a name where the dataset says so
    given = [w for w in words if w.casefold() in _NOT_NAMES and w.casefold() in all_given_names()]
    return {w for w in _standalone(words) + given if w.casefold() not in _SALUTATIONS and not _IS_PLACE_WORD.match(w)}


_DATASET_NAME_ZIPF = 4.5  # a name word this common in the text's languages ("West", "Hill", "Even") stays a word
_DATASET_NAME_SHARE = 0.3  # found as a name in fewer of the texts where it is capitalised: a product ("Python", "Git")
_CAP_WORD = regex.compile(r"(?<![\w'’\-])(?P<w>\p{Lu}[\p{L}'’\-]*\p{L})(?:['’]s)?(?![\w'’\-])")
_NAME_SHAPE = regex.compile(rf"^{_NAME_WORD}$")  # "Kuba", "McKay", not "API", "NumPy"


def dataset_names(found: Iterable[tuple[str, list]]) -> frozenset[str]:
    """Of the words found in persons' names across a dataset's (text, findings), those shaped like
    a name and found as one in a fair share of the texts where they are capitalised."""
    named, seen = Counter(), Counter()  # texts a word was found in as a name; texts it is capitalised in
    for text, results in found:
        named.update({w for r in results if r.entity_type == "PERSON" for w in name_words(text[r.start:r.end])})
        seen.update({m.group("w") for m in _CAP_WORD.finditer(text)})
    return frozenset(w for w, n in named.items() if _NAME_SHAPE.match(w) and n >= _DATASET_NAME_SHARE * seen[w])


def named_elsewhere(text: str, results: list, names: frozenset[str]) -> list:
    """Capitalised words of text, not yet found, that were found as (part of) a person's name in
    some record of the same dataset: a model that saw "Kuba" after "my name is" misses it in "Kuba
    had given"; the dataset's other mention says what the word is. Words common in the text's
    languages are left to the context rules, and so are words after a place's first word."""
    from presidio_analyzer import RecognizerResult
    from wordfreq import zipf_frequency

    out = []
    for m in _CAP_WORD.finditer(text) if names else ():
        w = m.group("w")
        if (w in names and not any(r.start < m.end("w") and m.start() < r.end for r in results)
                and _NOT_AFTER_PLACE_WORD.match(text, m.start())  # "Our Hervé office", "North Nathan"
                and max(zipf_frequency(w, lang) for lang in text_languages(text)) < _DATASET_NAME_ZIPF):
            out.append(RecognizerResult("PERSON", m.start(), m.end("w"), 0.45))
    return out


_ITEM = r"\p{Lu}[\p{L}'’\-]+(?: \p{Lu}\.?(?= ))?(?: \p{Lu}[\p{L}'’\-]+)?(?![\w'’\-])"
_LIST = regex.compile(rf"(?<![\w'’\-]){_ITEM}(?:, {_ITEM})*,? (?:and|und|i|oraz|et|y|e|en|or) {_ITEM}(?![\w'’\-])")


def complete_lists(text: str, results: list) -> list:
    """In an enumeration of capitalised words ("Nikolić, Shaw and Bennett", "Anna, Jan i Zofia"),
    items beside a detected name are names too: NER often tags some items of a list and not others."""
    from presidio_analyzer import RecognizerResult

    added = []
    for m in _LIST.finditer(text):
        items = [(i.start() + m.start(), i.end() + m.start()) for i in regex.finditer(_ITEM, m.group(0))]
        named = [any(r.entity_type == "PERSON" and r.start <= a and b <= r.end for r in results) for a, b in items]
        if any(named):
            # every other item goes, a word that is also a function word or a place included ("Mia,
            # Victoria, Jan and Eva"): the list says what they are
            added += [RecognizerResult("PERSON", a, b, 0.5) for (a, b), hit in zip(items, named)
                      if not hit and not any(w in _SALUTATIONS for w in text[a:b].casefold().split())]
    return results + added


_SLOT_TOKEN = regex.compile(r"\p{L}[\p{L}'’\-]*|\d+|[^\s\p{L}\d]")
_SLOT_WIDTH = 2  # tokens each side that make a slot: "town , [X] ! $"
_SLOT_VALUES, _SLOT_SHARE = 3, 0.5  # names found there: distinct values at least, and share of its capitalised runs


def _slot(text: str, start: int, end: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tokens either side of text[start:end], casefolded, padded at the text's ends."""
    left = [t.casefold() for t in _SLOT_TOKEN.findall(text[max(0, start - 60):start])][-_SLOT_WIDTH:]
    right = [t.casefold() for t in _SLOT_TOKEN.findall(text[end:end + 60])][:_SLOT_WIDTH]
    return tuple(["^"] * (_SLOT_WIDTH - len(left)) + left), tuple(right + ["$"] * (_SLOT_WIDTH - len(right)))


def _free_runs(text: str, results: list) -> Iterable[tuple[int, int]]:
    """Runs of capitalised words no finding touches."""
    for m in _NAME_RUN.finditer(text):
        if not any(r.start < m.end() and m.start() < r.end for r in results):
            yield m.start(), m.end()


def name_slots(found: Iterable[tuple[str, list]]) -> frozenset:
    """The contexts (two tokens either side) where a dataset's texts name people: those holding at
    least _SLOT_VALUES distinct names found, which are most of the capitalised runs seen there."""
    values: dict = {}
    seen: Counter = Counter()
    for text, results in found:
        for r in (r for r in results if r.entity_type == "PERSON"):
            key = _slot(text, r.start, r.end)
            values.setdefault(key, set()).add(text[r.start:r.end].casefold())
            seen[key] += 1
        seen.update(_slot(text, a, b) for a, b in _free_runs(text, results))
    return frozenset(k for k, v in values.items() if len(v) >= _SLOT_VALUES and len(v) >= _SLOT_SHARE * seen[k])


def in_name_slots(text: str, results: list, slots: frozenset) -> list:
    """Capitalised runs, not yet found, standing where the dataset's other texts name people:
    "Don't go to town, [Jordan]!" when that sentence came with a name found in other records."""
    from presidio_analyzer import RecognizerResult

    def word(a: int, b: int) -> bool:  # "but [My] just has": a function word is one only where it opens a sentence
        w = text[a:b].casefold()
        return w in _SALUTATIONS or w in text_stopwords(text) and _opens_sentence(text, a)

    return [RecognizerResult("PERSON", a, b, 0.45) for a, b in (_free_runs(text, results) if slots else ())
            if _slot(text, a, b) in slots and not word(a, b)]


def address_slots(found: Iterable[tuple[str, list]]) -> dict[str, list]:
    """The contexts (two tokens either side) around at least _SLOT_VALUES distinct addresses
    found in a dataset's texts, as patterns that take what stands between those tokens, filed
    under the token nearest the address on the left (a text is tried only on its own tokens)."""
    values: dict = {}
    for text, results in found:
        for r in (r for r in results if r.entity_type == "STREET_ADDRESS"):
            values.setdefault(_slot(text, r.start, r.end), set()).add(text[r.start:r.end])
    slots: dict[str, list] = {}
    for (left, right), v in values.items():
        # a context of text ends alone ("^ ^ [...] $ $") would take whole texts
        if len(v) >= _SLOT_VALUES and set(left) - {"^"} and set(right) - {"$"}:
            slots.setdefault(left[-1], []).append(_slot_pattern((left, right)))
    return slots


def _slot_pattern(key: tuple[tuple[str, ...], tuple[str, ...]]):
    def tokens(side: tuple[str, ...]) -> str:
        return r"\s*".join(r"\A" if t == "^" else r"\Z" if t == "$" else regex.escape(t) for t in side)

    left, right = key
    return regex.compile(rf"(?<![\w'’]){tokens(left)}\s*(?P<v>\S.{{0,150}}?)\s*{tokens(right)}(?![\w'’])",
                         regex.IGNORECASE | regex.DOTALL)


def in_address_slots(text: str, results: list, slots: dict[str, list]) -> list:
    """What stands where the dataset's other texts hold an address, when it has a digit and is
    mostly found already: the whole of it is the address ("my address to [#### cours #####] for
    post mail": the patterns left a street kind between two parts)."""
    from presidio_analyzer import RecognizerResult

    out = []
    tokens = {t.casefold() for t in _SLOT_TOKEN.findall(text)} if slots and regex.search(r"\d", text) else set()
    for pattern in (p for t in tokens & slots.keys() for p in slots[t]):
        for m in pattern.finditer(text):
            a, b = m.span("v")
            if regex.search(r"\d", m.group("v")) and _mostly_found(text, a, b, results):
                out.append(RecognizerResult("STREET_ADDRESS", a, b, 0.45))
    return out


def _mostly_found(text: str, a: int, b: int, results: list) -> bool:
    """Findings cover at least half of text[a:b]'s letters and digits, no one of them all of it,
    and the words they leave could be an address's (no sentence after the address: "... The
    parcel was", "... for this card: <card>")."""
    inside = [r for r in results if r.start < b and a < r.end]
    if any(r.start <= a and b <= r.end for r in inside):
        return False
    marked = [any(r.start <= i < r.end for r in inside) for i in range(a, b) if text[i].isalnum()]
    left = [m for m in regex.finditer(r"[^\s,]+", text[a:b]) if not any(r.start <= a + m.start() < r.end for r in inside)]
    return sum(marked) >= 0.5 * len(marked) > 0 and all(_slot_address_word(m.group(), text, a + m.start()) for m in left)


_AFTER_STOP = regex.compile(r"[.!?][ \t\"“(']*$")


def _slot_address_word(word: str, text: str, at: int) -> bool:
    """A word in an address slot that no finding took: an address word, a designator ("Suite"), or
    a capitalised word that is no function word and opens no sentence ("Lombardi [Center]", not
    "... 88058. [The] parcel")."""
    if _street_gap_word(word, text) or regex.fullmatch(_DESIGNATOR, word):
        return True
    return word[:1].isupper() and word.casefold() not in text_stopwords(text) and not _AFTER_STOP.search(text, max(0, at - 4), at)
