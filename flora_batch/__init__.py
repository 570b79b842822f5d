"""flora-batch: push spreadsheet rows through FLORA techniques without paying twice."""
