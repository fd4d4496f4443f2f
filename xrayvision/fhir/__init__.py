"""Radiologists' reports from the hospital's FHIR server: the client (client.py), the standard R4 searches
(search.py) and the reference HIS's facade (his.py), one entry point for both: find_report."""
from __future__ import annotations

from xrayvision.config import FHIRSettings

from .client import FHIRClient, FHIRError
from .his import find_his
from .query import FoundReport, NotFound, ReportQuery
from .search import find_r4

__all__ = ["FHIRClient", "FHIRError", "FoundReport", "NotFound", "ReportQuery", "find_report"]


async def find_report(client: FHIRClient, query: ReportQuery, settings: FHIRSettings) -> FoundReport | NotFound:
    """The exam's final report, or why not; FHIRError when the server cannot answer (see FHIRError.server_down)."""
    find = find_his if settings.flavour == "his" else find_r4
    return await find(client, query, settings)
