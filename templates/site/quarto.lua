-- Pandoc Lua filter: the Quarto features our posts use, for the pandoc engine.
--  * callouts: ::: {.callout-tip title="..."} becomes a titled box;
--  * figures with #fig-... ids are numbered ("Figure 1: ...") and @fig-... references link to them;
--  * tables sit in a .table-wrap box that scrolls sideways when a table is wider than the column.

local kinds = { note = "Note", tip = "Tip", warning = "Warning", important = "Important", caution = "Caution" }

local function callout(el)
  for _, cls in ipairs(el.classes) do
    local kind = cls:match("^callout%-(%a+)$")
    if kind and kinds[kind] then
      local title = el.attributes["title"] or kinds[kind]
      el.attributes["title"] = nil
      local inlines = pandoc.utils.blocks_to_inlines(pandoc.read(title, "markdown").blocks)
      local header = pandoc.Div({ pandoc.Plain(inlines) }, { class = "callout-header" })
      local body = pandoc.Div(el.content, { class = "callout-body" })
      el.content = { header, body }
      el.classes:insert("callout")
      return el
    end
  end
end

function Pandoc(doc)
  local numbers, n = {}, 0
  doc = doc:walk({
    Figure = function(fig)
      if fig.identifier:match("^fig%-") then
        n = n + 1
        numbers[fig.identifier] = n
        local first = fig.caption.long[1]
        if first then
          first.content:insert(1, pandoc.Str("Figure " .. n .. ": "))
        end
        return fig
      end
    end,
    Div = callout,
    -- A table wider than the column scrolls inside its own box, never the page.
    Table = function(tbl)
      return pandoc.Div({ tbl }, { class = "table-wrap" })
    end,
  })
  doc = doc:walk({
    Cite = function(cite)
      local id = cite.citations[1].id
      if numbers[id] then
        return pandoc.Link({ pandoc.Str("Figure " .. numbers[id]) }, "#" .. id)
      end
    end,
  })
  return doc
end
