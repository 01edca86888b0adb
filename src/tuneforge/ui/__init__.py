"""`tuneforge ui`: local web pages over the stages (runs, data, human evaluation); see app.py."""
