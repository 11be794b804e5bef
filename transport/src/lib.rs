//! Length-prefixed JSON frames over TCP between nodes. Built in the next issue.
