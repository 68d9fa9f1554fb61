"""Building blocks modules share (a module never imports another module; they all may import
these). Each fact about the box has one implementation here."""
