"""The person acting: who at the calling organisation asked, answered or read.

The organisation's credentials (API key or client certificate) authenticate the organisation;
its own system says which of its people acts, in headers the gateway takes on the strength of
those credentials (entrypoints/http/auth.py): `Attest-Actor` (the person's id in the caller's
system: a caseworker's or a clinician's user id, never a CPR number) and, for a health
professional, `Attest-Actor-Authorisation` (the autorisations-ID of the Danish Patient Safety
Authority, five characters; sent alone, it is the person's id too). The audit log records them
with every request, reply and read (in an entry's `detail`: `actor_person`,
`actor_authorisation`); a reply's MedCom author must agree with them (services/health.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: A person's id in the caller's system: letters, digits and . _ @ : + - (an e-mail address
#: or a user name fits), 1 to 64 characters; a CPR number is refused on top (core/bounds.py).
PERSON_ID_PATTERN: Final = r"^[A-Za-z0-9._@:+-]{1,64}$"
#: An autorisations-ID: five characters, digits and consonants (Y included), upper case.
AUTHORISATION_ID_PATTERN: Final = r"^[0-9BCDFGHJKLMNPQRSTVWXYZ]{5}$"
AUTHORISATION_ID: Final = re.compile(AUTHORISATION_ID_PATTERN)

#: The audit entry's detail keys for the person acting.
PERSON_KEY: Final = "actor_person"
AUTHORISATION_KEY: Final = "actor_authorisation"


@dataclass(frozen=True, slots=True)
class Actor:
    """The person acting for the authenticated organisation, as its system names them."""

    person_id: str
    authorisation_id: str | None = None

    def detail(self) -> dict[str, str]:
        """What an audit entry's detail records of them."""
        found = {PERSON_KEY: self.person_id}
        if self.authorisation_id is not None:
            found[AUTHORISATION_KEY] = self.authorisation_id
        return found


def actor_detail(actor: Actor | None) -> dict[str, str]:
    """The detail of an audit entry for `actor` (nothing when no person was named)."""
    return actor.detail() if actor is not None else {}
