"""What to tell whom, in their language (pure): the receipt a customer gets at once."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import ReceivedData

FALLBACK_LANGUAGE = "en"

# (subject, greeting with a name, greeting without, body, sign-off)
_RECEIPT: dict[str, tuple[str, str, str, str, str]] = {
    "en": (
        "We have received your complaint ({ref})",
        "Dear {name},",
        "Dear customer,",
        "Thank you for telling us about this, and we are sorry for the trouble it has caused. "
        "We have received your complaint and given it the reference {ref}. A member of our "
        "team will look into it and get back to you as soon as possible.",
        "Kind regards,\nCustomer Care",
    ),
    "tr": (
        "Şikâyetinizi aldık ({ref})",
        "Sayın {name},",
        "Değerli müşterimiz,",
        "Bunu bize bildirdiğiniz için teşekkür ederiz; yaşadığınız sorun için özür dileriz. "
        "Şikâyetinizi aldık ve {ref} referans numarasını verdik. Ekibimizden biri konuyu "
        "inceleyip en kısa sürede size dönüş yapacak.",
        "Saygılarımızla,\nMüşteri Hizmetleri",
    ),
    "nl": (
        "We hebben uw klacht ontvangen ({ref})",
        "Beste {name},",
        "Beste klant,",
        "Dank u dat u ons dit laat weten, en onze excuses voor het ongemak. We hebben uw "
        "klacht ontvangen onder referentie {ref}. Een medewerker van ons team zoekt het uit "
        "en neemt zo snel mogelijk contact met u op.",
        "Met vriendelijke groet,\nKlantenservice",
    ),
}


@dataclass(frozen=True)
class Message:
    kind: str
    medium: str
    recipient: str
    language: str
    subject: str
    body: str


def receipt(data: ReceivedData) -> Message | None:
    """The receipt e-mail for a received complaint, or None when there is no address."""
    if not data.customer.email:
        return None
    language = data.customer.language()
    if language not in _RECEIPT:
        language = FALLBACK_LANGUAGE
    subject, named, unnamed, body, sign_off = _RECEIPT[language]
    ref = data.complaint_id
    greeting = named.format(name=data.customer.name) if data.customer.name else unnamed
    return Message(
        kind="receipt",
        medium="email",
        recipient=data.customer.email,
        language=language,
        subject=subject.format(ref=ref),
        body=f"{greeting}\n\n{body.format(ref=ref)}\n\n{sign_off}\n",
    )


def retry_delay_s(attempts: int) -> float:
    """Back-off before delivery attempt `attempts + 1`: 5 s, 10 s, 20 s … capped at 10 min."""
    return float(min(5 * 2 ** max(attempts - 1, 0), 600))


MAX_ATTEMPTS = 8
