"""The DSO's worklist: legal due dates (:mod:`.deadlines`) and the items built from the pipeline's topics
(:mod:`.items`). Pure functions; ``sevisflow todo`` reads the topics and renders the list."""
