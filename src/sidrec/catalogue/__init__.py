"""The live catalogue: the items a trained model serves, and the items added after training.

    build    a model's `Catalogue` (the arrays it is handed) built from a run directory,
             and the fingerprint of the inputs it was trained on
    rows     `NewItems` and the append of a `Catalogue` (`grow`, m rows copied per add)
    encode   new items checked and encoded: the run's encoder, its fitted tokenizer
    place    SIDs for new items whose prefix is full
    store    `added_items.parquet`: read, write, lock, stamp, fingerprint
    view     `CatalogueView`: ids, titles, cold flags, popularity, replaced whole
    live     `LiveCatalogue`: ids <-> rows, the view, add / refresh / load, one lock

`sidrec.api.Service` recommends over a `LiveCatalogue`; models hear of an add through
`Recommender.items_added(catalogue, first_new)`.
"""

from sidrec.catalogue.live import LiveCatalogue
from sidrec.catalogue.rows import NewItems

__all__ = ["LiveCatalogue", "NewItems"]
