"""Sample complaints for the tests and the benchmarks: valid
`complaint.submitted` data, each with its own external id and e-mail address."""

from __future__ import annotations

import uuid
from typing import Any


def submission(channel: str = "web", /, **overrides: Any) -> dict[str, Any]:
    """A valid `complaint.submitted` data document with a unique external id and e-mail."""
    token = uuid.uuid4().hex[:10]
    data: dict[str, Any] = {
        "external_id": f"{channel}-{token}",
        "channel": channel,
        "customer": {
            "id": f"cust-{token}",
            "name": "Sanne de Vries",
            "email": f"sanne.{token}@example.com",
            "phone": "+31 20 555 0101",
            "locale": "nl",
        },
        "description": "Mijn bestelling is al drie keer verkeerd bezorgd.",
        "category": "service",
        "amount_at_stake": {"amount": "89.00", "currency": "EUR"},
    }
    data.update(overrides)
    return data
