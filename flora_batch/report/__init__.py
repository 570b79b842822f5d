"""What a batch became, for people: ``lines`` joins the ledger with the rows in input order
(pure), ``files`` writes the results files and sidecars, ``html`` the contact sheet,
``status`` where a batch stands."""
