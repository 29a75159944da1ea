"""The people the tests' messages name: the citizen, the job centre's caseworker and the
clinician who replies (as MedCom author values and as job-centre JSON)."""

from __future__ import annotations

from typing import Any, Final

from attest_gateway.medcom.build import PersonName, SegmentAuthor

CITIZEN_NAME: Final = PersonName(family="Jensen", given=("Anne", "Marie"))
CASEWORKER: Final = SegmentAuthor(
    name=PersonName(family="Nielsen", given=("Lars",)),
    phone="+4587131313",
    role="Sagsbehandler",
    email="lars.nielsen@jobcenter.example",
)
CLINICIAN: Final = SegmentAuthor(
    name=PersonName(family="Holm", given=("Mette",)),
    phone="+4578470000",
    role="Læge",
    role_code="laege",
    authorisation_id="0C4B1",
)


def citizen_name_json() -> dict[str, Any]:
    """`citizen_name` of a job-centre request."""
    return {"given": ["Anne", "Marie"], "family": "Jensen"}


CONSENT_DATE = "2020-01-02"
"""The day the test citizen consented: in the past for every clock the tests set."""


def consent_json() -> dict[str, Any]:
    """`consent` of a job-centre request: the citizen's consent (every attest type takes it)."""
    return {"given": True, "date": CONSENT_DATE}


def caseworker_json() -> dict[str, Any]:
    """`caseworker` of a job-centre request."""
    return {
        "given": ["Lars"],
        "family": "Nielsen",
        "phone": "+4587131313",
        "email": "lars.nielsen@jobcenter.example",
    }
