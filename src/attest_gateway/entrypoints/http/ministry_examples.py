"""Examples of the ministry's answers for the OpenAPI document: real answers of a gateway
after eight answered requests of test data (no real person), each list cut to two entries."""

from __future__ import annotations

from typing import Any

MINISTRY_EXAMPLES: dict[str, Any] = {
    "/ministry/v1/report": {
        "filters": {
            "period": "month",
            "from": None,
            "to": None,
            "attest_type": None,
            "region": None,
        },
        "min_cell_citizens": 5,
        "contact_baseline": 0.25,
        "unit": "seconds",
        "national": {
            "durations": [
                {
                    "group": "DK",
                    "label": "Danmark",
                    "metric": "request_to_delivery",
                    "suppressed": False,
                    "count": 8,
                    "median": 26.25,
                    "p90": 56.25,
                    "p99": 56.25,
                },
                {
                    "group": "DK",
                    "label": "Danmark",
                    "metric": "delivery_to_fetch",
                    "suppressed": False,
                    "count": 8,
                    "median": 26.25,
                    "p90": 56.25,
                    "p99": 56.25,
                },
            ],
            "deadlines": [
                {
                    "group": "DK",
                    "label": "Danmark",
                    "suppressed": False,
                    "requests": 8,
                    "late_requests": 0,
                    "late_request_rate": 0.0,
                    "replied": 8,
                    "open": 0,
                    "decided": 8,
                    "overdue": 0,
                    "overdue_rate": 0.0,
                    "reminders": 0,
                }
            ],
            "contacts": [
                {
                    "group": "DK",
                    "label": "Danmark",
                    "suppressed": False,
                    "baseline": 0.25,
                    "settled": 8,
                    "with_contact": 8,
                    "without_contact": 0,
                    "coverage": 1.0,
                }
            ],
        },
        "series": {
            "durations": [
                {
                    "period_start": "2026-12-01",
                    "group": "DK",
                    "label": "Danmark",
                    "metric": "request_to_attest",
                    "suppressed": False,
                    "count": 8,
                    "median": 26.25,
                    "p90": 56.25,
                    "p99": 56.25,
                }
            ],
            "deadlines": [
                {
                    "period_start": "2026-12-01",
                    "group": "DK",
                    "label": "Danmark",
                    "suppressed": False,
                    "requests": 8,
                    "late_requests": 0,
                    "late_request_rate": 0.0,
                    "replied": 8,
                    "open": 0,
                    "decided": 8,
                    "overdue": 0,
                    "overdue_rate": 0.0,
                    "reminders": 0,
                }
            ],
            "contacts": [
                {
                    "period_start": "2026-12-01",
                    "group": "DK",
                    "label": "Danmark",
                    "suppressed": False,
                    "baseline": 0.25,
                    "settled": 8,
                    "with_contact": 8,
                    "without_contact": 0,
                    "coverage": 1.0,
                }
            ],
        },
        "by_region": {
            "durations": [
                {
                    "group": "1084",
                    "label": "Region Hovedstaden",
                    "metric": "request_to_attest",
                    "suppressed": False,
                    "count": 8,
                    "median": 26.25,
                    "p90": 56.25,
                    "p99": 56.25,
                }
            ],
            "deadlines": [
                {
                    "group": "1084",
                    "label": "Region Hovedstaden",
                    "suppressed": False,
                    "requests": 8,
                    "late_requests": 0,
                    "late_request_rate": 0.0,
                    "replied": 8,
                    "open": 0,
                    "decided": 8,
                    "overdue": 0,
                    "overdue_rate": 0.0,
                    "reminders": 0,
                }
            ],
            "contacts": [
                {
                    "group": "1084",
                    "label": "Region Hovedstaden",
                    "suppressed": False,
                    "baseline": 0.25,
                    "settled": 8,
                    "with_contact": 8,
                    "without_contact": 0,
                    "coverage": 1.0,
                }
            ],
        },
        "by_attest_type": {
            "durations": [
                {
                    "group": "LÆ 105",
                    "label": "LÆ 105",
                    "metric": "request_to_attest",
                    "suppressed": True,
                    "count": None,
                    "median": None,
                    "p90": None,
                    "p99": None,
                },
                {
                    "group": "LÆ 275",
                    "label": "LÆ 275",
                    "metric": "request_to_attest",
                    "suppressed": False,
                    "count": 6,
                    "median": 25.0,
                    "p90": 55.0,
                    "p99": 55.0,
                },
            ],
            "deadlines": [
                {
                    "group": "LÆ 105",
                    "label": "LÆ 105",
                    "suppressed": True,
                    "requests": None,
                    "late_requests": None,
                    "late_request_rate": None,
                    "replied": None,
                    "open": None,
                    "decided": None,
                    "overdue": None,
                    "overdue_rate": None,
                    "reminders": None,
                },
                {
                    "group": "LÆ 275",
                    "label": "LÆ 275",
                    "suppressed": False,
                    "requests": 6,
                    "late_requests": 0,
                    "late_request_rate": 0.0,
                    "replied": 6,
                    "open": 0,
                    "decided": 6,
                    "overdue": 0,
                    "overdue_rate": 0.0,
                    "reminders": 0,
                },
            ],
        },
        "by_municipality": {
            "deadlines": [
                {
                    "group": "101",
                    "label": "København",
                    "suppressed": False,
                    "requests": 8,
                    "late_requests": 0,
                    "late_request_rate": 0.0,
                    "replied": 8,
                    "open": 0,
                    "decided": 8,
                    "overdue": 0,
                    "overdue_rate": 0.0,
                    "reminders": 0,
                }
            ],
            "contacts": [
                {
                    "group": "101",
                    "label": "København",
                    "suppressed": False,
                    "baseline": 0.25,
                    "settled": 8,
                    "with_contact": 8,
                    "without_contact": 0,
                    "coverage": 1.0,
                }
            ],
        },
    },
    "/ministry/v1/durations": {
        "filters": {
            "period": "month",
            "from": None,
            "to": None,
            "attest_type": None,
            "region": None,
        },
        "min_cell_citizens": 5,
        "unit": "seconds",
        "rows": [
            {
                "group": "DK",
                "label": "Danmark",
                "metric": "request_to_attest",
                "suppressed": False,
                "count": 8,
                "median": 26.25,
                "p90": 56.25,
                "p99": 56.25,
            }
        ],
    },
    "/ministry/v1/deadlines": {
        "filters": {
            "period": "month",
            "from": None,
            "to": None,
            "attest_type": None,
            "region": None,
        },
        "min_cell_citizens": 5,
        "rows": [
            {
                "group": "DK",
                "label": "Danmark",
                "suppressed": False,
                "requests": 8,
                "late_requests": 0,
                "late_request_rate": 0.0,
                "replied": 8,
                "open": 0,
                "decided": 8,
                "overdue": 0,
                "overdue_rate": 0.0,
                "reminders": 0,
            }
        ],
    },
    "/ministry/v1/contacts": {
        "filters": {
            "period": "month",
            "from": None,
            "to": None,
            "attest_type": None,
            "region": None,
        },
        "min_cell_citizens": 5,
        "baseline": 0.25,
        "rows": [
            {
                "group": "DK",
                "label": "Danmark",
                "suppressed": False,
                "baseline": 0.25,
                "settled": 8,
                "with_contact": 8,
                "without_contact": 0,
                "coverage": 1.0,
            }
        ],
    },
    "/ministry/v1/meta": {
        "metrics": [
            {
                "name": "request_to_delivery",
                "title": "request → in mailbox",
                "from": "submitted",
                "to": "in_mailbox",
            },
            {
                "name": "delivery_to_fetch",
                "title": "in mailbox → fetched",
                "from": "in_mailbox",
                "to": "fetched",
            },
        ],
        "deadlines": {
            "LÆ 105": "14d",
            "LÆ 115": "14d",
            "LÆ 125": "14d@receipt",
            "LÆ 135": "30d",
            "LÆ 145": "30d",
            "LÆ 155": "2m",
            "LÆ 225": "14d",
            "LÆ 265": "30d",
            "LÆ 275": "30d",
            "LÆ 285": "14d",
        },
        "deadline_days": {
            "LÆ 105": 14.0,
            "LÆ 115": 14.0,
            "LÆ 125": 14.0,
            "LÆ 135": 30.0,
            "LÆ 145": 30.0,
            "LÆ 155": 60.9,
            "LÆ 225": 14.0,
            "LÆ 265": 30.0,
            "LÆ 275": 30.0,
            "LÆ 285": 14.0,
        },
        "regions": [
            {"code": "1081", "name": "Region Nordjylland"},
            {"code": "1082", "name": "Region Midtjylland"},
        ],
        "municipalities": [
            {"code": "101", "name": "København", "region_code": "1084"},
            {"code": "147", "name": "Frederiksberg", "region_code": "1084"},
        ],
        "min_cell_citizens": 5,
        "contact_baseline": 0.25,
        "no_contact_baseline": 0.75,
        "no_contact_target": 0.5,
        "contact_counts": ["attest", "meeting"],
        "contact_window_weeks": 8,
        "late_request_weeks": {"sygedagpenge": 8},
    },
}
