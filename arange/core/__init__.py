"""What every range shares: the task protocol (:mod:`.task`), the driver with its job store and
resume (:mod:`.driver`), the executors (:mod:`.executors`) and bounded reading of the files a
user hands over (:mod:`.safeio`). Nothing is imported here."""
